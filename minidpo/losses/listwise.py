"""Losses over K ranked answers of one prompt (listwise data), on the implicit rewards
r_k = beta (log pi(y_k|x) - log ref(y_k|x)), each answer's log-probs summed over its tokens.

    listwise_pairs  the DPO sigmoid loss -log s(r_i - r_j), averaged over every ordered pair (i, j) of a
                    row with score_i > score_j (ties make no pair), over the whole batch: the same number
                    as training those pairs as given pairs with loss_type sigmoid.
    plackett_luce   the negative log-likelihood of the ranking under the Plackett-Luce model (listwise
                    DPO / DPO-PL, Rafailov et al. 2023, appendix A.3): sum over positions t of
                    -log( e^{r_(t)} / sum_{u >= t} e^{r_(u)} ), averaged over rows. Tied answers are
                    ordered by their index in the record (the earlier one first).

Inputs are (B, K) tensors; rows with fewer answers than K are padded and marked in `valid` (B, K) bool.

Ranking metrics of the implicit rewards against the scores, per row (for the logs): `kendall_tau` (tau-b)
and `ndcg`."""

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


def kendall_tau(rewards: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall's tau-b between each row's rewards and its scores: (B,) float32, from (B, K) rewards, scores and
    valid (None: every answer is real). Over the row's answer pairs, (concordant - discordant) /
    sqrt((pairs not tied in rewards) (pairs not tied in scores)): 1 when the rewards order the answers as
    the scores do, -1 when reversed, ties handled as scipy.stats.kendalltau does. NaN where it is undefined:
    every reward tied (as at step 0, policy == reference), every score tied, or fewer than 2 answers;
    average rows with torch.nanmean."""
    r, s = rewards.float(), scores.to(rewards.device, torch.float32)
    dr = torch.sign(r[:, :, None] - r[:, None, :])
    ds = torch.sign(s[:, :, None] - s[:, None, :])
    if valid is not None:  # a padded answer takes part in no pair (whatever its values)
        both = (valid[:, :, None] & valid[:, None, :]).to(rewards.device)
        dr, ds = (torch.where(both, d, torch.zeros_like(d)) for d in (dr, ds))
    # over ordered pairs (i, j) and (j, i) alike: each unordered pair counts twice in all three sums
    return (dr * ds).sum((1, 2)) / ((dr * dr).sum((1, 2)) * (ds * ds).sum((1, 2))).sqrt()


def ndcg(rewards: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """NDCG of each row's answers ranked by reward (highest first), the scores as gains: (B,) float32, from
    (B, K) rewards, scores and valid (None: every answer is real). Linear gains, shifted so that the row's
    lowest score gains 0 (scores are any numbers: a ranking's K-1..0, ratings 1..5, ...): gain_k = s_k -
    min s; discount 1 / log2(1 + position), positions 1..K, the whole list (no cutoff). Tied rewards share
    their positions' discounts (the mean over the positions they occupy: ties neither help nor hurt, so the
    value does not depend on the answers' order in the record). NDCG = DCG / the DCG of the scores' own
    order: 1 for a perfect ranking. NaN where it is undefined: every score tied or fewer than 2 answers."""
    r, s = rewards.float(), scores.to(rewards.device, torch.float32)
    valid = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.to(r.device, torch.bool)
    gains = torch.where(valid, s - s.masked_fill(~valid, float("inf")).amin(1, keepdim=True), torch.zeros_like(s))
    K = r.shape[1]
    # cumulative discounts: cum[n] = sum of 1 / log2(1 + p) over positions p = 1..n
    positions = torch.arange(1, K + 1, device=r.device, dtype=r.dtype)
    cum = torch.cat([r.new_zeros(1), (1.0 / torch.log2(1.0 + positions)).cumsum(0)])
    pair = valid[:, :, None] & valid[:, None, :]
    above = ((r[:, None, :] > r[:, :, None]) & pair).sum(2)  # answers ranked strictly higher
    tied = ((r[:, None, :] == r[:, :, None]) & pair).sum(2).clamp(min=1)  # this answer and its ties
    discount = (cum[above + tied] - cum[above]) / tied
    dcg = (gains * discount * valid).sum(1)
    ideal = (gains.sort(1, descending=True).values * (cum[1:] - cum[:-1])).sum(1)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=torch.finfo(r.dtype).tiny), torch.full_like(dcg, float("nan")))


def listwise_loss(loss_type: str, policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor,
                  valid: torch.Tensor | None = None, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_type listwise_pairs or plackett_luce: (the batch's loss, the rewards (B, K) detached)."""
    if loss_type == "listwise_pairs":
        return listwise_pairs_loss(policy_logps, ref_logps, scores, valid, beta=beta)
    if loss_type == "plackett_luce":
        return plackett_luce_loss(policy_logps, ref_logps, scores, valid, beta=beta)
    raise ValueError(f"unknown listwise loss_type {loss_type!r}: choose one of {', '.join(LISTWISE_LOSSES)}")
