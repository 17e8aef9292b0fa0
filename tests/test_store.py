"""The model directory: crash-safe swap, recovery, the lock, held-out and replay slices."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mtn_sails import store
from mtn_sails.data import Record
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


def test_second_holder_of_the_lock_gets_a_clear_error(tmp_path):
    target = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from mtn_sails.store import locked\n"
                               f"with locked({str(target)!r}):\n    print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"in use by another session \\(pid {holder.pid}\\)"):
            with store.locked(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.locked(target):  # the OS lock died with its process
        pass


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
