"""KTO (Ethayarajh et al. 2024, as TRL's KTOTrainer): a loss on unpaired examples, each a completion
labelled desirable or undesirable. With r = log pi(y|x) - log ref(y|x) (summed over the completion) and
z the KL reference point,

    desirable    desirable_weight   * (1 - s(beta (r - z)))
    undesirable  undesirable_weight * (1 - s(beta (z - r)))

z is estimated per batch (`batch_kl`) from mismatched pairs, each completion scored after the next
example's prompt: mean(log pi - log ref) over them, averaged over ranks, clamped at 0, detached; or it is
a fixed number (`kto_kl`). With pairwise terms (loss_type sigmoid,kto, `settings.split_kto`) a run trains
its pairs with those and its unpaired examples with these losses times kto's loss_weights entry."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

KTO_KL_BATCH = "batch"


def kto_kl_value(kto_kl) -> float | None:
    """The `kto_kl` setting: None for "batch" (estimated per batch), else the fixed reference point."""
    if isinstance(kto_kl, str) and kto_kl.strip() == KTO_KL_BATCH:
        return None
    try:
        value = float(kto_kl)
    except (TypeError, ValueError):
        raise ValueError(f'kto_kl {kto_kl!r}: expected "batch" or a number (the fixed KL reference point)') from None
    if not math.isfinite(value):
        raise ValueError(f"kto_kl must be finite, got {kto_kl!r}")
    return value


def check_kto_settings(desirable_weight: float, undesirable_weight: float, kto_kl) -> None:
    for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {w}")
    kto_kl_value(kto_kl)


def batch_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
             mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """KTO's reference point from the mismatched pairs' log-probs (B,): their mean log-ratio, averaged
    over ranks (mean_over_ranks, None on one rank), clamped at 0; a detached scalar, as TRL's."""
    kl = (policy_kl_logps.float() - ref_kl_logps.float()).mean().detach()
    if mean_over_ranks is not None:
        kl = mean_over_ranks(kl)
    return kl.clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor | float, *,
             beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses and rewards (beta r, detached), each (B,), float32.
    labels: (B,) bool, True for a desirable completion; kl: the reference point z (detached)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ratio = policy_logps.float() - ref_logps.float()
    z = torch.as_tensor(kl, dtype=torch.float32, device=ratio.device).detach()
    good = labels.to(ratio.device, torch.bool)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio)))
    return torch.where(good, desirable, undesirable), (beta * ratio).detach()
