"""What a session shows while it trains: one plain line per epoch in a log, one line updated in place on a terminal."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO, run_cli, write_qa
from mtn_sails.console import end_live, live, say
from mtn_sails.training.progress import duration, fit

EPOCH_LINE = re.compile(r"   epoch (\d+)/3: loss \d+\.\d{4}, eval loss \d+\.\d{4} \(\d+s\)")


def train_args(tiny_model_dir, tmp_path) -> list[str]:
    """A three-epoch session of the tiny model on 24 question/answer records (two held out)."""
    data = write_qa(tmp_path / "qa.json", repeat=2)
    return ["train", "--data-file", str(data), "--model-name", str(tiny_model_dir), "--output-dir",
            str(tmp_path / "model"), "--epochs", "3"]


def run_on_a_terminal(args: list[str], cwd) -> tuple[int, str, str]:
    """`python main.py ARGS` with stdout on a pseudo-terminal, as a person runs it: (exit code, stdout, stderr)."""
    leader, follower = os.openpty()
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], stdout=follower,
                               stderr=subprocess.PIPE, cwd=cwd, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    stderr = process.stderr.read().decode()
    return process.wait(timeout=60), out.decode(), stderr


def test_a_log_gets_one_plain_line_per_epoch(tiny_model_dir, tmp_path):
    done = run_cli(*train_args(tiny_model_dir, tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [match.group(1) for line in done.stdout.splitlines() if (match := EPOCH_LINE.fullmatch(line))]
    assert epochs == ["1", "2", "3"], done.stdout
    assert "\r" not in done.stdout and "step " not in done.stdout and "{'" not in done.stdout
    assert done.stderr == ""


def test_a_terminal_gets_one_line_updated_in_place_that_ends_with_the_step_count(tiny_model_dir, tmp_path):
    code, out, stderr = run_on_a_terminal(train_args(tiny_model_dir, tmp_path), tmp_path)
    assert code == 0, stderr[-2000:]
    steps = int(re.search(r"(\d+) optimizer steps", out).group(1))
    updates = re.findall(r"\r   (step (\d+)/(\d+)  epoch [^\r\n]*)", out)
    assert len(updates) >= 2 and {total for _, _, total in updates} == {str(steps)}
    assert [int(step) for _, step, _ in updates] == sorted(int(step) for _, step, _ in updates)  # only forward
    assert all(" tok/s" in text and " loss " in text for text, _, _ in updates)
    assert " left" in updates[0][0]
    final = updates[-1][0]
    assert final.startswith(f"step {steps}/{steps}  epoch 3.00/3") and re.search(r"took \S+$", final.rstrip())
    assert f"{final}\r\n" in out  # the last state stays, ended by its newline
    assert not EPOCH_LINE.search(out) and stderr == ""  # no per-epoch lines, nothing from the Trainer


def test_a_message_during_the_terminal_line_gets_a_line_of_its_own(capsys):
    live("   step 1/4")
    say("a message")
    live("   step 2/4")
    end_live()
    assert capsys.readouterr().out == "\r   step 1/4\r           \ra message\n\r   step 2/4\n"


def test_a_narrow_terminal_keeps_the_step_and_the_time_left():
    parts = ["step 1234/5678", "epoch 1.20/30", "loss 3.2145", "eval 3.3012", "12,345 tok/s", "1h02m left"]
    assert fit(parts, 90) == parts
    assert fit(parts, 60) == ["step 1234/5678", "loss 3.2145", "12,345 tok/s", "1h02m left"]
    assert fit(parts, 30) == ["step 1234/5678", "loss 3.2145", "1h02m left"]


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
