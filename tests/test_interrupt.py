"""Ctrl-C (a real SIGINT to a real `dsa` process) during `dsa profile` and `dsa train` on tiny models: exit code
130, one line saying what was kept and how to continue, and every file that existed before byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_data import write_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.tiny_models:tiny_mbv2"


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from cli import app; app()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_after(proc: subprocess.Popen, marker: str, timeout: float = 240.0) -> tuple[str, str]:
    """Read stderr until a line contains ``marker``, send SIGINT, and return (stdout, stderr) after the exit."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not seen.wait(timeout):
        proc.kill()
        pytest.fail(f"never saw {marker!r}; stderr:\n{''.join(lines)}")
    time.sleep(0.3)  # inside the measuring / the next epoch
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=timeout)
    reader.join(timeout=30)  # the reader alone drains stderr, to its end
    return proc.stdout.read(), "".join(lines)


def test_sigint_during_profile_keeps_the_old_profile_and_a_partial_one(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    out.write_text('{"an": "earlier complete profile"}\n')
    before = out.read_bytes()
    proc = _start(
        "profile", "--model", TINY, "--input-size", "32", "--batch-size", "2", "--warmup", "0", "--repeats", "20000",
        "--threads", "1", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = _interrupt_after(proc, "Ctrl-C keeps what was measured")
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted (Ctrl-C)") and "profile.partial.json" in last, stderr
    assert f"{out} is unchanged" in last
    assert "Traceback" not in stderr and stdout == ""
    assert out.read_bytes() == before
    partial = json.loads((tmp_path / "profile.partial.json").read_text())
    assert partial["complete"] is False and partial["kind"] == "dsa.profile"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    # the partial profile is refused unless explicitly allowed
    partial_path = str(tmp_path / "profile.partial.json")
    r = subprocess.run(
        [sys.executable, "-c", "from cli import app; app()", "validate", "--profile", partial_path],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 1 and "field 'complete' is false" in r.stderr


def test_sigint_during_train_keeps_the_last_checkpoint_and_says_resume(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data", classes=2, per_split={"train": 150, "val": 2}, size=32)
    run = tmp_path / "run"
    proc = _start(
        "train", "--data", str(data), "--model", TINY, "--image-size", "32", "--epochs", "50", "--batch-size", "2",
        "--lr", "0.01", "--threads", "1", "--bench-repeats", "0", "--out", str(run), cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = _interrupt_after(proc, "epoch 1/50:")
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted in epoch 2/50"), stderr
    assert "last.pt (epoch 1) is kept" in last and "--resume" in last
    assert "Traceback" not in stderr
    saved = (run / "last.pt").read_bytes()
    # a second interrupt in the resumed run leaves that checkpoint byte-identical
    proc = _start(
        "train", "--data", str(data), "--model", TINY, "--image-size", "32", "--epochs", "50", "--batch-size", "2",
        "--lr", "0.01", "--threads", "1", "--bench-repeats", "0", "--out", str(run), "--resume",
        cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = _interrupt_after(proc, "resuming after epoch 1")
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted in epoch 2/50"), stderr
    assert (run / "last.pt").read_bytes() == saved
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
