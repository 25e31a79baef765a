"""Distributed plumbing without a process group: stale JIT-build locks, child environments, the trainer's
command line by module name."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from minidpo.distributed import RENDEZVOUS_VARS, clear_stale_build_locks, launch_env, trainer_command


def _lock(root, op: str, age_s: float):
    folder = root / op
    folder.mkdir()
    lock = folder / "lock"
    lock.write_text("")
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return lock


def test_a_lock_left_by_a_killed_build_is_removed_with_a_line(tmp_path):
    stale = _lock(tmp_path, "cpu_adam", age_s=3600)
    young = _lock(tmp_path, "fresh_op", age_s=1)
    lines = []
    removed = clear_stale_build_locks(str(tmp_path), log=lines.append)
    assert removed == [str(stale)] and not stale.exists()
    assert young.exists()  # maybe a build that has just started: named, not removed
    assert any("removed" in line and "cpu_adam/lock" in line for line in lines)
    assert any("fresh_op/lock" in line and "delete it" in line for line in lines)


def test_a_lock_of_a_running_build_is_kept(tmp_path):
    busy = _lock(tmp_path, "busy_op", age_s=3600)
    builder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=busy.parent)
    try:
        time.sleep(0.2)
        assert clear_stale_build_locks(str(tmp_path), log=lambda line: None) == []
        assert busy.exists()
    finally:
        builder.kill()
        builder.wait()
    assert clear_stale_build_locks(str(tmp_path), log=lambda line: None) == [str(busy)]


def test_child_environment_and_trainer_command(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    env = launch_env(EXTRA="1")
    assert not set(RENDEZVOUS_VARS) & set(env) and env["EXTRA"] == "1"
    cmd = trainer_command("deepspeed", 2)
    assert cmd[0].endswith("deepspeed") and cmd[-2:] == ["--module", "minidpo.train"] and "--num_gpus" in cmd
    assert trainer_command("python") == [sys.executable, "-m", "minidpo.train"]
    help_text = subprocess.run([sys.executable, "-m", "minidpo.train", "--help"], capture_output=True, text=True,
                               timeout=300)
    assert help_text.returncode == 0 and "--beta" in help_text.stdout and "LoRA" in help_text.stdout
