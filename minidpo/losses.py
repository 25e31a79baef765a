"""The preference-loss family. Pure tensor math: knows nothing of models, data or DeepSpeed.

All inputs are per-pair log-probabilities of a response given its prompt, already reduced over the
response tokens (a sum for DPO, see `minidpo.logprobs`). With

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))

the losses are

    sigmoid  -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (DPO; eps > 0 is cDPO)
    hinge    max(0, 1 - beta * h)                                               (SLiC)
    ipo      (h - 1 / (2 * beta))^2                                             (IPO, Azar et al. 2023)

and the implicit rewards are r_w = beta * (log pi(y_w|x) - log ref(y_w|x)), likewise r_l.

rpo_alpha > 0 adds alpha * (the chosen answer's mean negative log-likelihood per token) to each pair's
loss (RPO, Pang et al. 2024; TRL's `rpo_alpha`): DPO alone may lower the chosen answer's likelihood
along with the rejected one's; this term holds the chosen answer up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def check_loss_settings(loss_type: str, beta: float, label_smoothing: float = 0.0, rpo_alpha: float = 0.0) -> None:
    """Raise a ValueError naming the bad setting; cheap, so configs can call it before any heavy work."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing (cDPO) only applies to loss_type='sigmoid', not {loss_type!r}")
    if not rpo_alpha >= 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss and implicit rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: shape (B,), log pi(y|x) of the trained model.
        ref_chosen_logps, ref_rejected_logps: shape (B,), log ref(y|x) of the frozen reference.
        beta: strength of the implicit KL constraint (0.1 in the DPO paper).
        loss_type: "sigmoid" (DPO), "hinge" or "ipo".
        label_smoothing: cDPO's assumed probability that a preference label is flipped.
        rpo_alpha: weight of the chosen answers' per-token NLL (0: plain DPO).
        chosen_lengths: shape (B,), response tokens of each chosen answer; needed when rpo_alpha > 0
            and the log-probs are sums (pass ones for per-token means).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each of shape (B,), computed in float32;
        the rewards are detached. Reduce `losses` with `.mean()`.
    """
    check_loss_settings(loss_type, beta, label_smoothing, rpo_alpha)
    chosen_ratio = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_ratio = policy_rejected_logps.float() - ref_rejected_logps.float()
    h = chosen_ratio - rejected_ratio

    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:  # ipo
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    if rpo_alpha:
        if chosen_lengths is None:
            raise ValueError("rpo_alpha > 0 needs chosen_lengths (tokens per chosen answer)")
        losses = losses - rpo_alpha * policy_chosen_logps.float() / chosen_lengths.float()

    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
