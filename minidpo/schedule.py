"""The learning-rate schedule every run uses: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """lr multiplier for optimizer step s (0-based): linear warmup to 1, then cosine to min_lr_ratio."""

    def ratio(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return ratio
