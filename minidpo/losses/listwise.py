"""Losses over K ranked answers of one prompt (listwise data), on the implicit rewards
r_k = beta (log pi(y_k|x) - log ref(y_k|x)), each answer's log-probs summed over its tokens.

    listwise_pairs  the DPO sigmoid loss -log s(r_i - r_j), averaged over every ordered pair (i, j) of a
                    row with score_i > score_j (ties make no pair), over the whole batch: the same number
                    as training those pairs as given pairs with loss_type sigmoid.
    plackett_luce   the negative log-likelihood of the ranking under the Plackett-Luce model (listwise
                    DPO / DPO-PL, Rafailov et al. 2023, appendix A.3): sum over positions t of
                    -log( e^{r_(t)} / sum_{u >= t} e^{r_(u)} ), averaged over rows. Tied answers are
                    ordered by their index in the record (the earlier one first).

Inputs are (B, K) tensors; rows with fewer answers than K are padded and marked in `valid` (B, K) bool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LISTWISE_LOSSES = ("listwise_pairs", "plackett_luce")


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * (policy_logps.float() - ref_logps.float())


def ordered_pairs(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, K) bool: [b, i, j] when answers i and j of row b are both real and score_i > score_j."""
    better = scores[:, :, None] > scores[:, None, :]
    if valid is not None:
        better = better & valid[:, :, None] & valid[:, None, :]
    return better


def listwise_pairs_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor,
                        valid: torch.Tensor | None = None, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's loss: mean over all its ordered pairs, the rewards (B, K) detached)."""
    r = implicit_rewards(policy_logps, ref_logps, beta)
    pairs = ordered_pairs(scores.to(r.device), None if valid is None else valid.to(r.device))
    losses = -F.logsigmoid(r[:, :, None] - r[:, None, :])
    n = pairs.sum()
    # a batch without any ordered pair (all tied) gives 0, still connected to the graph
    loss = (losses * pairs).sum() / n.clamp(min=1)
    return loss, r.detach()


def plackett_luce_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor,
                       valid: torch.Tensor | None = None, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's loss: mean over rows of the ranking's NLL, the rewards (B, K) detached)."""
    r = implicit_rewards(policy_logps, ref_logps, beta)
    valid = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.to(r.device, torch.bool)
    # best first; a stable sort keeps tied answers in index order; padding sorts last
    key = scores.to(r.device, torch.float32).masked_fill(~valid, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    # padding gets a reward whose e^r is exactly 0 in float32 (finite, so no nan in the backward)
    ranked = r.gather(1, order).masked_fill(~valid.gather(1, order), -1e9)
    # log sum_{u >= t} e^{r_(u)}: a log-cumsum-exp from the end
    rest = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)
    terms = torch.where(valid.gather(1, order), rest - ranked, torch.zeros_like(ranked))
    return terms.sum(dim=1).mean(), r.detach()


def pair_accuracy(rewards: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reward accuracy over ordered pairs: the share of pairs (score_i > score_j) with r_i > r_j."""
    pairs = ordered_pairs(scores.to(rewards.device), None if valid is None else valid.to(rewards.device))
    right = (rewards[:, :, None] > rewards[:, None, :]) & pairs
    return right.sum().float() / pairs.sum().clamp(min=1)


def listwise_loss(loss_type: str, policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor,
                  valid: torch.Tensor | None = None, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_type listwise_pairs or plackett_luce: (the batch's loss, the rewards (B, K) detached)."""
    if loss_type == "listwise_pairs":
        return listwise_pairs_loss(policy_logps, ref_logps, scores, valid, beta=beta)
    if loss_type == "plackett_luce":
        return plackett_luce_loss(policy_logps, ref_logps, scores, valid, beta=beta)
    raise ValueError(f"unknown listwise loss_type {loss_type!r}: choose one of {', '.join(LISTWISE_LOSSES)}")
