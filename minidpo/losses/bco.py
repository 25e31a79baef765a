"""bco_pair's reward shift delta: the running mean of the implicit rewards, held across steps by the caller."""

from __future__ import annotations

from collections.abc import Callable

import torch


class RunningRewardMean:
    """delta of bco_pair (Jung et al. 2024): the mean, over every update so far, of each update's mean
    reward (chosen and rejected alike), as TRL's `RunningMoments.mean`: every micro-batch counts once.

    Pass it as `preference_loss(..., bco_delta=running)`: each call first updates it with the micro-batch's
    detached rewards beta * a and beta * b, then uses the new mean, as TRL's bco_pair does. Pass
    `bco_delta=running.value` to use the mean without updating it (evaluation). The loop creates one per run,
    before the first step, and keeps `state_dict()` in its checkpoint so a resumed run goes on with the same
    delta. `reduce` maps the micro-batch's mean reward (a 0-d tensor) to the mean over all ranks (e.g. an
    all-reduce average), so every rank holds the same delta. A non-finite mean (a skipped step) is not
    counted. The mean stays on the rewards' device: updating it never waits for the GPU.
    """

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce = reduce
        self._mean = torch.zeros((), dtype=torch.float32)
        self._count = torch.zeros((), dtype=torch.float32)

    @property
    def value(self) -> torch.Tensor:
        """The running mean, a 0-d float32 tensor (0 before the first update)."""
        return self._mean

    def update(self, rewards: torch.Tensor) -> torch.Tensor:
        """Count the mean of `rewards` (detached) once; return the new running mean."""
        batch = rewards.detach().float().mean()
        if self.reduce is not None:
            batch = self.reduce(batch)
        mean, count = self._mean.to(batch.device), self._count.to(batch.device)
        counted = torch.isfinite(batch)
        count = count + counted.float()
        self._mean = torch.where(counted, mean + (batch - mean) / count.clamp(min=1.0), mean)
        self._count = count
        return self._mean

    def state_dict(self) -> dict:
        return {"mean": float(self._mean), "count": int(self._count)}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore `state_dict()`'s numbers; None (a checkpoint without them) starts from scratch."""
        state = state or {"mean": 0.0, "count": 0}
        self._mean = torch.tensor(float(state["mean"]), dtype=torch.float32)
        self._count = torch.tensor(float(state["count"]), dtype=torch.float32)
