"""Per-sequence response log-probabilities from a causal LM's logits.

Convention used across minidpo: `loss_mask[n, t] == 1` when token `input_ids[n, t]` belongs to the
response being scored. Its log-probability comes from the logits at position t - 1, so position 0
can never be scored (a response always follows at least one prompt token).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("sum", "mean")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows_per_chunk: int = 4) -> torch.Tensor:
    """log softmax(logits)[target] for every position, without a full-vocabulary log_softmax tensor.

    Args:
        logits: (N, T, V), any float dtype. targets: (N, T) token ids.
    Returns:
        (N, T) float32.

    log p(target) = logit[target] - logsumexp(logit). Working a few rows at a time bounds the float32
    copy of the logits (the largest tensor of a DPO step on small models) to `rows_per_chunk` rows.
    """
    out = []
    for lg, tg in zip(logits.split(rows_per_chunk), targets.split(rows_per_chunk)):
        lg = lg.float()
        picked = lg.gather(-1, tg.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


def sequence_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    reduction: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce response-token log-probs to one number per sequence.

    Args:
        logits: (N, T, V) model output for `input_ids`.
        input_ids: (N, T). loss_mask: (N, T), 1 on response tokens (see module docstring).
        reduction: "sum" is the DPO definition log pi(y|x); "mean" divides by the response length,
            which reproduces MiniMind's later (length-normalised) variant.
    Returns:
        (logps, n_tokens): (N,) float32 reduced log-probs and (N,) response-token counts.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown log-prob reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
    mask = loss_mask[:, 1:].to(torch.float32)
    per_token = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    logps = (per_token * mask).sum(-1)
    n_tokens = mask.sum(-1)
    if reduction == "mean":
        logps = logps / n_tokens.clamp(min=1.0)
    return logps, n_tokens


def concatenated_logps(model, batch: dict, reduction: str):
    """One forward over [chosen; rejected]; returns (chosen_logps, rejected_logps, aux_loss or None)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logps, n_tokens = sequence_logprobs(out.logits, batch["input_ids"], batch["loss_mask"], reduction=reduction)
    if (n_tokens == 0).any():  # the data layer drops such pairs; never train on one that slipped through
        raise RuntimeError("a sequence in this batch has no response tokens")
    half = logps.shape[0] // 2
    return logps[:half], logps[half:], getattr(out, "aux_loss", None)
