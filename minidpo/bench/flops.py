"""Model FLOPs of DPO work, counted the same way for every trainer: what the model needs for the
pairs, not what an implementation happens to compute (padding and shared prompts do not count)."""

from __future__ import annotations


def matmul_params(cfg: dict) -> int:
    """Parameters that take part in a matmul per token: attention and MLP projections, and the LM head
    (a tied embedding counts once, as the head; the input lookup is free)."""
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter
    return layers * per_layer + d * cfg["vocab_size"]


def sequence_forward_flops(cfg: dict, length: int) -> float:
    """Forward FLOPs of one causal sequence: 2 per parameter per token, plus QK^T and AV over the causal
    half of the length x length scores (2 * L^2 * d per layer)."""
    return 2.0 * matmul_params(cfg) * length + 2.0 * cfg["num_hidden_layers"] * cfg["hidden_size"] * length ** 2


def list_flops(cfg: dict, prompt: int, answers: list[int]) -> float:
    """K answers to one prompt: policy forward + backward (3x forward) and one reference forward on each
    [prompt, answer_k], the prompt counted once per answer (however a trainer shares it)."""
    return 4.0 * sum(sequence_forward_flops(cfg, prompt + answer) for answer in answers)


def dpo_pair_flops(cfg: dict, prompt: int, chosen: int, rejected: int) -> float:
    """One DPO pair: a list of two answers, [prompt, chosen] and [prompt, rejected]."""
    return list_flops(cfg, prompt, [chosen, rejected])
