"""Non-finite steps: an update whose loss or gradient is NaN/inf is skipped, counted, and after too many in
a row the run stops with a FaultError saying why."""

from __future__ import annotations

import torch

from minidpo.errors import FaultError


def _plain_torch_optimizer(engine) -> bool:
    """ZeRO-1/2/3 and the bf16/fp16 wrappers detect a non-finite gradient themselves and skip the
    update (weights, Adam moments and lr schedule untouched; engine.skipped_steps += 1). Only ZeRO-0
    in fp32 hands the gradients straight to torch's AdamW, which would write NaN into the weights."""
    return not hasattr(engine.optimizer, "overflow")


class NonFiniteGuard:
    """Counts optimizer steps whose update was skipped (non-finite loss or gradient, fp16 overflow) and
    stops the run after `max_in_a_row` of them in a row (0: never)."""

    def __init__(self, engine, max_in_a_row: int):
        self.engine = engine
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self._engine_skips = engine.skipped_steps

    def step(self) -> None:
        """engine.step(); at an accumulation boundary with a non-finite gradient, no update."""
        engine = self.engine
        if _plain_torch_optimizer(engine) and engine.is_gradient_accumulation_boundary() and not _grads_finite(engine):
            _skip_plain_step(engine)
        else:
            engine.step()

    def after_step(self, step: int, last_good_checkpoint: str | None) -> bool:
        """True if the step just taken was skipped; raises after too many in a row."""
        skipped = self.engine.skipped_steps > self._engine_skips
        self._engine_skips = self.engine.skipped_steps
        if not skipped:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            where = f"; the last checkpoint is {last_good_checkpoint}" if last_good_checkpoint else ""
            raise FaultError(
                f"step {step}: {self.in_a_row} optimizer steps in a row had a non-finite loss or gradient norm and "
                f"were skipped (--max_skipped_steps {self.max_in_a_row}). Likely causes: a learning rate too high, "
                "fp16 overflow (use bf16), a pair whose log-probs underflow (very long answers with "
                f"--logps_reduction sum), or a bad checkpoint/model{where}")
        return True


def _grads_finite(engine) -> bool:
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).sum()))


def _skip_plain_step(engine) -> None:
    """Run engine.step() with torch's optimizer step replaced by nothing and flagged as an overflow, so
    the engine's own bookkeeping (zero grads, no lr step, skipped_steps) is the one DeepSpeed does for
    an fp16 overflow."""
    opt = engine.optimizer
    opt.step, opt.overflow = (lambda *a, **k: None), True
    try:
        engine.step()
    finally:
        del opt.step, opt.overflow
