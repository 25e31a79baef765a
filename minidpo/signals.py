"""Stop requests: SIGTERM / Ctrl-C finish the current optimizer step, save a checkpoint and exit 0."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist


class StopRequest:
    """SIGTERM / SIGINT ask the run to stop after the current optimizer step (with a checkpoint); a
    second signal aborts at once. `agreed()` is collective: every rank learns that some rank was asked,
    so all stop at the same step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            # A launcher forwards the terminal's Ctrl-C as a signal of its own (deepspeed: SIGTERM,
            # torchrun: the same one) within milliseconds: only a later, second SIGINT is a person.
            if signum == signal.SIGINT and time.monotonic() - self._first_at > 1.0:
                print(f"minidpo: second {name}: aborting now, without a checkpoint", file=sys.stderr, flush=True)
                os._exit(130)
            return
        self.signal_name, self._first_at = name, time.monotonic()
        print(f"minidpo: {name} received: stopping after this optimizer step with a checkpoint "
              "(send it again to abort at once)", file=sys.stderr, flush=True)

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a signal on another rank"
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def resume_hint(output_dir: str) -> str:
    return ("minidpo: to continue, run the same command again with --resume true "
            f"(output_dir {output_dir})")
