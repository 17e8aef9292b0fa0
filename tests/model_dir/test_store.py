"""The model directory: crash-safe swap, recovery, the lock, held-out and replay slices."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers import run_cli, write_qa
from mtn_sails.model_dir import store
from mtn_sails.data.files import Record
from mtn_sails.errors import LockedError


def make_dir(path, content: str):
    path.mkdir(parents=True)
    (path / "weights").write_text(content)
    return path


def test_replace_directory_swaps_whole(tmp_path):
    target = make_dir(tmp_path / "model", "old")
    staging = make_dir(store.sibling(target, "staging"), "new")
    store.replace_directory(staging, target)
    assert (target / "weights").read_text() == "new"
    assert not staging.exists() and not store.sibling(target, "old").exists()


def test_replace_directory_can_keep_the_old_version(tmp_path):
    target = make_dir(tmp_path / "model", "old")
    staging = make_dir(store.sibling(target, "staging"), "new")
    backup = store.backup_path(target)
    store.replace_directory(staging, target, keep_old_as=backup)
    assert (backup / "weights").read_text() == "old" and (target / "weights").read_text() == "new"


def test_recover_restores_a_swap_interrupted_between_renames(tmp_path):
    target = make_dir(tmp_path / "model", "old")
    os.rename(target, store.sibling(target, "old"))  # the crash: step 2 done, step 3 not
    assert "restored" in store.recover(target)
    assert (target / "weights").read_text() == "old"


def test_recover_cleans_a_completed_swap(tmp_path):
    target = make_dir(tmp_path / "model", "new")
    make_dir(store.sibling(target, "old"), "old")
    assert "removed" in store.recover(target)
    assert (target / "weights").read_text() == "new" and not store.sibling(target, "old").exists()
    assert store.recover(target) is None


def hold_lock(target) -> subprocess.Popen:
    """A process that takes the lock of `target`, says "held", and keeps it for 30 s."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from mtn_sails.model_dir.store import locked\n"
                               f"with locked({str(target)!r}):\n    print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_holder_of_the_lock_gets_a_clear_error(tmp_path):
    target = tmp_path / "model"
    holder = hold_lock(target)
    try:
        with pytest.raises(LockedError, match=f"in use by another session \\(pid {holder.pid}\\)"):
            with store.locked(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.locked(target):  # the OS lock died with its process
        pass


def test_a_second_train_session_exits_4_with_one_line(tmp_path):
    target = tmp_path / "trained_model"
    holder = hold_lock(target)
    try:
        result = run_cli("train", "--data-file", str(write_qa(tmp_path / "qa.json")), "--output-dir", str(target),
                         "--model-name", "scratch", timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 4, result.stderr
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1 and f"in use by another session (pid {holder.pid})" in output[0]
    assert not target.exists()


def test_a_lock_left_by_a_killed_session_never_blocks_the_next(tmp_path):
    target = tmp_path / "model"
    holder = hold_lock(target)
    holder.kill()  # SIGKILL: no finally, no release; the lock file stays behind
    holder.wait()
    assert store.sibling(target, "lock").exists()
    with store.locked(target):
        pass
    assert not store.sibling(target, "lock").exists()  # the next session's release removed it


def test_a_session_leaves_only_the_model_directory(tmp_path):
    target = tmp_path / "model"
    for content in ("first", "second"):
        with store.locked(target):
            assert store.sibling(target, "lock").exists()
            staging = store.fresh_staging(target)
            (staging / "weights").write_text(content)
            store.replace_directory(staging, target)
        assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert (target / "weights").read_text() == "second"


def test_the_lock_stays_exclusive_while_sessions_come_and_go(tmp_path):
    """Sessions that delete the lock file on release, racing others that opened it: never two holders."""
    target, inside = tmp_path / "model", tmp_path / "inside"
    session = ("import os, sys\nfrom mtn_sails.errors import LockedError\nfrom mtn_sails.model_dir.store import locked\n"
               "held = 0\nfor _ in range(300):\n    try:\n        with locked(sys.argv[1]):\n"
               "            os.close(os.open(sys.argv[2], os.O_CREAT | os.O_EXCL))  # fails if another holds it\n"
               "            held += 1\n            os.remove(sys.argv[2])\n"
               "    except LockedError:\n        pass\nprint(held)")
    sessions = [subprocess.Popen([sys.executable, "-c", session, str(target), str(inside)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [process.communicate(timeout=300) for process in sessions]
    assert [process.returncode for process in sessions] == [0] * 4, [err for _, err in outcomes]
    assert sum(int(out) for out, _ in outcomes) > 0
    assert list(tmp_path.iterdir()) == []  # no lock file, no marker


def test_os_rules_pick_the_windows_branches():
    windows, posix = store.os_rules("nt"), store.os_rules("posix")
    assert not windows.fsync_directories and posix.fsync_directories  # no directory descriptors on Windows
    assert windows.fsync_file_flags == os.O_RDWR and posix.fsync_file_flags == os.O_RDONLY  # FlushFileBuffers
    assert not windows.unlink_lock_while_held and posix.unlink_lock_while_held  # an open file cannot go
    assert windows.rename_attempts > 1 and posix.rename_attempts == 1  # a scanner's open file blocks a rename


def test_swap_and_recovery_also_hold_under_the_windows_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RULES", store.os_rules("nt"))
    target = make_dir(tmp_path / "model", "old")
    staging = make_dir(store.sibling(target, "staging"), "new")
    (staging / "sub").mkdir()
    store.replace_directory(staging, target)
    assert (target / "weights").read_text() == "new"
    os.rename(target, store.sibling(target, "old"))
    assert "restored" in store.recover(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_slices_round_trip_and_are_bounded(tmp_path):
    records = [Record(index=i, kind="pair", shape="question/answer", prompt=f"q{i}", response=f"a{i}")
               for i in range(30)]
    store.write_slice(tmp_path, store.REPLAY_DIR, 1, records, limit=10, seed=0)
    store.write_slice(tmp_path, store.REPLAY_DIR, 2, records[:5], limit=10, seed=0)
    slices = store.read_slices(tmp_path, store.REPLAY_DIR)
    assert sorted(slices) == [1, 2] and len(slices[1]) == 10 and len(slices[2]) == 5
    assert {r.prompt for r in slices[1]} <= {r.prompt for r in records}
    assert [(r.prompt, r.response) for r in slices[2]] == [(r.prompt, r.response) for r in records[:5]]


def test_resume_skips_a_checkpoint_whose_write_was_interrupted(tmp_path):
    assert store.find_resume_checkpoint(tmp_path / "none") is None
    for step, complete in ((3, True), (6, True), (9, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"x")
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    assert store.find_resume_checkpoint(tmp_path).name == "checkpoint-6"
