"""The one test seam: faults a test plans for a training run through the MINIDPO_FAULT variable.

MINIDPO_FAULT="action@point:step[+][:rankN],..." makes a process do `action` when it reaches `point`
at optimizer step `step` (`+`: that step and every later one), e.g. `kill@step:3` (SIGKILL after step
3), `kill@save:4` (SIGKILL inside the save of step 4, after the files were written, before they are
committed), `nan@loss:3+` (the loss of steps >= 3 is NaN), `term@step:2`, `int2@step:2` (two Ctrl-C),
`stop@step:2` (SIGSTOP: a frozen rank), `enospc@save:4` (a full disk).

The variable is read once, when this module is imported (a test in one process sets PLANNED to
`plan(spec)` instead); with nothing planned, `inject` returns at once.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

import torch
import torch.distributed as dist


def plan(spec: str) -> list[tuple[str, str, int, bool, int | None]]:
    faults = []
    for item in filter(None, spec.split(",")):
        action, _, where = item.partition("@")
        point, step, *rank = where.split(":")
        onward = step.endswith("+")
        faults.append((action, point, int(step.rstrip("+")), onward, int(rank[0][4:]) if rank else None))
    return faults


PLANNED = plan(os.environ.get("MINIDPO_FAULT", ""))


def inject(point: str, step: int, path: str = "") -> str | None:
    """Do what MINIDPO_FAULT plans for (point, step) on this rank; returns the action (for `nan`)."""
    if not PLANNED:
        return None
    rank = dist.get_rank() if dist.is_initialized() else 0
    for action, where, at, onward, only_rank in PLANNED:
        if where != point or (step != at and not (onward and step > at)) or only_rank not in (None, rank):
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "int2":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.5)  # a person's second Ctrl-C, not a launcher's echo of the first
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return action
    return None


def poison_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    """The `nan@loss:N` hook: the loss of optimizer step N (1-based) becomes NaN."""
    return loss * float("nan") if inject("loss", step) == "nan" else loss
