"""The preference-loss family. Pure tensor math: knows nothing of models, data or DeepSpeed.

All inputs are per-pair log-probabilities of a response given its prompt, already reduced over the
response tokens (a sum for DPO, see `minidpo.logprobs`). With

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))

the losses are

    sigmoid  -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (DPO; eps > 0 is cDPO)
    hinge    max(0, 1 - beta * h)                                               (SLiC)
    ipo      (h - 1 / (2 * beta))^2                                             (IPO, Azar et al. 2023)

and the implicit rewards are r_w = beta * (log pi(y_w|x) - log ref(y_w|x)), likewise r_l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def check_loss_settings(loss_type: str, beta: float, label_smoothing: float = 0.0) -> None:
    """Raise a ValueError naming the bad setting; cheap, so configs can call it before any heavy work."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing (cDPO) only applies to loss_type='sigmoid', not {loss_type!r}")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss and implicit rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: shape (B,), log pi(y|x) of the trained model.
        ref_chosen_logps, ref_rejected_logps: shape (B,), log ref(y|x) of the frozen reference.
        beta: strength of the implicit KL constraint (0.1 in the DPO paper).
        loss_type: "sigmoid" (DPO), "hinge" or "ipo".
        label_smoothing: cDPO's assumed probability that a preference label is flipped.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each of shape (B,), computed in float32;
        the rewards are detached. Reduce `losses` with `.mean()`.
    """
    check_loss_settings(loss_type, beta, label_smoothing)
    chosen_ratio = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_ratio = policy_rejected_logps.float() - ref_rejected_logps.float()
    h = chosen_ratio - rejected_ratio

    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:  # ipo
        losses = (h - 1.0 / (2.0 * beta)) ** 2

    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
