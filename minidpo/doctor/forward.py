"""The forwards a run will use, checked on this model: the shared-prompt (packed) forward against two
sequences a pair, and the fused LM head against the model's own logits. In float32, so any
difference beyond rounding is a masking, position or head bug, not precision."""

from __future__ import annotations

import torch

from minidpo.data import collate_packed, collate_pairs
from minidpo.data.collate import padded_length
from minidpo.logprobs import _inner_model, forward_kwargs, packed_forward_unsupported, pair_logps

TOLERANCE = 1e-3  # nats on a sum of float32 log-probs (plus 1e-4 relative)


def longest_pairs(dataset, cfg, packed: bool) -> list:
    """The largest micro-batch a run can see: the longest pairs, batch_size of them or as many as fill
    max_tokens_per_batch padded positions."""
    order = sorted(range(len(dataset)), key=lambda i: padded_length(dataset[i], packed), reverse=True)
    if not cfg.max_tokens_per_batch:
        return [dataset[i] for i in order[:cfg.batch_size]]
    longest = padded_length(dataset[order[0]], packed)
    return [dataset[i] for i in order[:max(1, cfg.max_tokens_per_batch // longest)]]


def _differ(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference beyond tolerance scale (<= 1: equal within TOLERANCE + 1e-4 relative)."""
    return float(((a - b).abs() / (TOLERANCE + 1e-4 * b.abs())).max())


def _logps(model, batch: dict, reduction: str) -> torch.Tensor:
    with torch.no_grad():
        chosen, rejected, *_ = pair_logps(model, batch, reduction)
    return torch.stack([chosen, rejected]).double()


def check_forwards(model, pairs, pad_token_id: int, reduction: str, want_packed: bool) -> list[tuple[bool, str]]:
    """[(passed, line)] for the shared-prompt forward and the fused head on `model` (float32, eval mode)."""
    results = []
    plain = _logps(model, collate_pairs(pairs, pad_token_id), reduction)
    reason = packed_forward_unsupported(model)
    if not want_packed or reason:
        why = reason or "--shared_prompt false"
        return [(True, f"shared-prompt forward: off ({why}); chosen and rejected run as two sequences"),
                (True, "fused LM head: not used (only the shared-prompt forward uses it)")]
    packed_batch = collate_packed(pairs, pad_token_id)
    packed = _logps(model, packed_batch, reduction)
    gap = _differ(packed, plain)
    results.append((gap <= 1, f"shared-prompt forward equals two sequences a pair: max |difference| "
                               f"{float((packed - plain).abs().max()):.2e} nats on {len(pairs)} pairs"
                    + ("" if gap <= 1 else f" - beyond {TOLERANCE:g}: this model's attention or positions do not "
                                           "take packed rows; run with --shared_prompt false")))
    module = _inner_model(model)
    if "logits_to_keep" not in forward_kwargs(model) or not getattr(module, "_minidpo_fused_head", False):
        results.append((True, "fused LM head: off for this model (its forward takes no logits_to_keep, or its "
                              "logits are not hidden @ head weight); the model's own logits are used"))
        return results
    module._minidpo_fused_head = False  # the model's own head, for this one comparison
    try:
        own = _logps(model, packed_batch, reduction)
    finally:
        module._minidpo_fused_head = True
    gap = _differ(packed, own)
    results.append((gap <= 1, f"fused LM head equals the model's own logits: max |difference| "
                               f"{float((packed - own).abs().max()):.2e} nats"
                    + ("" if gap <= 1 else " - the fused head would train on wrong log-probs: report it")))
    return results
