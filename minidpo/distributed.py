"""Distributed plumbing: the rendezvous, child-process environments, ports, timeouts, dead peers, and
the trainer's command line for a parent that starts it (make iterate, make bench).

Bottom layer: imports nothing of minidpo. DeepSpeed is imported inside `setup_distributed` only: it is
heavy and pulls in the accelerator at import time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
TRAINER_MODULE = "minidpo.train"  # what `trainer/train_dpo.py` runs; children start it by this name
STALE_LOCK_SECONDS = 60  # a JIT-build lock this old with no build running was left by a killed build


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict:
    """The environment for a training run started as a child process: this process's, without the
    rendezvous of a process group it may hold itself (its port is taken: the child would fail to listen)."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(extra)
    return env


def trainer_command(launcher: str = "deepspeed", nproc: int = 1) -> list[str]:
    """The start of a command line that runs the DPO trainer by module name (no path into a checkout):
    `deepspeed --num_gpus N --master_port P --module minidpo.train` or `python -m minidpo.train`."""
    if launcher == "deepspeed":
        deepspeed = str(Path(sys.executable).parent / "deepspeed")
        return [deepspeed, "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", TRAINER_MODULE]
    return [sys.executable, "-m", TRAINER_MODULE]


def dist_timeout(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=float(seconds))


def setup_distributed(timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; works under `deepspeed`/`torchrun` and standalone.

    A plain `python -m minidpo.train` has no launcher environment: we describe a world of one.
    timeout_s: how long a collective waits for the other ranks before it fails (a dead or hung rank).
    Returns (rank, world_size).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    # DeepSpeed JIT-compiles a small C++ op on CPU; cache it with the project instead of ~/.cache.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    clear_stale_build_locks(os.environ["TORCH_EXTENSIONS_DIR"])
    import deepspeed  # heavy: only a training process needs it
    import transformers

    # DeepSpeed logs every config key and memory figure at INFO; we print our own one-line summary.
    deepspeed.utils.logger.setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    timeout = {"timeout": dist_timeout(timeout_s)} if timeout_s else {}
    deepspeed.init_distributed(dist_backend=None, verbose=False, **timeout)
    return dist.get_rank(), dist.get_world_size()


def _build_running_in(folder: Path) -> bool:
    """Some live process works inside `folder` (the compiler torch starts runs there). Linux: /proc."""
    target = str(folder.resolve())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "cwd").startswith(target):
                return True
        except OSError:
            continue
    return False


def clear_stale_build_locks(extensions_dir: str, log=None) -> list[str]:
    """torch's JIT build of an extension holds `<extensions_dir>/<op>/lock` while it compiles; a build
    killed midway leaves it, and every later start waits for it forever without a word. Remove a lock
    older than STALE_LOCK_SECONDS when no process is compiling in that folder, with a line saying so;
    name a younger one. Returns the locks removed."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    removed = []
    for lock in sorted(Path(extensions_dir).glob("*/lock")):
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            continue
        if not Path("/proc/self").exists():  # no way to see a live build: say what to do
            log(f"minidpo: {lock} exists: if no DeepSpeed/torch extension build is running, delete it")
            continue
        if _build_running_in(lock.parent):
            continue
        if age >= STALE_LOCK_SECONDS:
            try:
                lock.unlink()
            except OSError:
                continue
            removed.append(str(lock))
            log(f"minidpo: removed {lock}: a stale lock of an extension build that was killed midway "
                "(no build is running); the op is built again")
        else:
            log(f"minidpo: {lock} exists and no build is running: if this start waits, delete it")
    return removed


_PEER_SIGNS = ("connection closed by peer", "connection reset", "timed out", "timeout", "broken pipe",
               "nccl", "gloo", "socket", "ProcessGroup", "terminated")


def peer_failure_message(error: BaseException) -> str | None:
    """A one-line explanation when `error` is a collective that failed because another rank died or
    hung; None for anything else (a real bug keeps its traceback)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(error)
    if not isinstance(error, (RuntimeError, OSError)) or not any(s.lower() in text.lower() for s in _PEER_SIGNS):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return (f"rank {dist.get_rank()} of {dist.get_world_size()}: a collective operation failed, another rank "
            f"probably died or hung (its own log says why); this rank gives up (--dist_timeout bounds the wait): {first}")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
