"""One forward over listwise rows [prompt, answer_1, ..., answer_K] (minidpo.data.collate.collate_listwise):
each answer attends to the prompt and to itself only and its positions restart after the prompt, so every
answer gets the log-probs of its own sequence [prompt, answer_k] while the prompt is computed once.

It runs with a dense (B, 1, T, T) additive mask (eager or sdpa attention), not the two-call split
attention of the pair packing (minidpo.packed_attention), which knows two answers only."""

from __future__ import annotations

import torch

from minidpo.logprobs import picked_logprobs


def listwise_attention_mask(answer_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask: causal, padding (-1) hidden, answer k sees the prompt (0) and answer k.
    Padding rows see the prompt, so no row is fully masked (which would give NaNs)."""
    T = answer_index.shape[1]
    q, k = answer_index[:, :, None], answer_index[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=answer_index.device).tril()
    allowed = (causal & (k >= 0) & ((k == 0) | (k == q)))[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def listwise_logps(model, batch: dict) -> torch.Tensor:
    """(B, Kmax) float32: each answer's log pi(y_k|x), summed over its tokens (0 where `batch["valid"]` is
    False). Equal to each [prompt, answer_k] run as its own sequence, to the packed-forward tolerance."""
    input_ids, answer_index = batch["input_ids"], batch["answer_index"]
    inner = getattr(model, "module", model)
    dtype = next(inner.parameters()).dtype
    impl = str(getattr(getattr(inner, "config", None), "_attn_implementation", None))
    if "flash" in impl:  # flash attention takes no dense mask (minidpo_packed falls back to sdpa with one)
        raise ValueError(f"listwise rows need eager or sdpa attention (a dense mask), not {impl!r}")
    logits = model(input_ids=input_ids, position_ids=batch["position_ids"], use_cache=False,
                   attention_mask=listwise_attention_mask(answer_index, dtype)).logits
    per_token = picked_logprobs(logits, batch["source"], input_ids)
    K = batch["valid"].shape[1]
    which = answer_index[:, None, :] == torch.arange(1, K + 1, device=answer_index.device)[None, :, None]
    return (per_token[:, None, :] * which).sum(-1)
