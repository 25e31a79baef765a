"""Evaluation figures from log-probs and judgements: preference accuracy, judge tables, KL."""

from __future__ import annotations

import math

import torch

from minidpo.generation import SamplingSettings, generate_ids
from minidpo.scoring import score_rows


def preference_metrics(sft_c, sft_r, dpo_c, dpo_r, n_c, n_r, beta: float) -> dict:
    """Held-out preference figures from per-pair log-probs (1-D tensors of equal length).

    With the SFT model as the reference, r(y) = beta * (log pi_dpo(y|x) - log pi_sft(y|x));
    `implicit_reward_accuracy` is how often r(chosen) > r(rejected), the held-out twin of the
    trainer's `rewards/accuracies`. `logp_accuracy` is each model's own ranking (length-biased),
    `logp_accuracy_per_token` the same per response token.
    """
    r_c, r_r = beta * (dpo_c - sft_c), beta * (dpo_r - sft_r)
    return {
        "n_pairs": int(len(sft_c)),
        "implicit_reward_accuracy": float((r_c > r_r).float().mean()),
        "implicit_reward_ties": float((r_c == r_r).float().mean()),
        "implicit_reward_margin": float((r_c - r_r).mean()),
        "rewards_chosen": float(r_c.mean()),
        "rewards_rejected": float(r_r.mean()),
        "logp_accuracy": {"sft": float((sft_c > sft_r).float().mean()), "dpo": float((dpo_c > dpo_r).float().mean())},
        "logp_accuracy_per_token": {
            "sft": float((sft_c / n_c.clamp(min=1) > sft_r / n_r.clamp(min=1)).float().mean()),
            "dpo": float((dpo_c / n_c.clamp(min=1) > dpo_r / n_r.clamp(min=1)).float().mean())},
        "logps_chosen": {"sft": float(sft_c.mean()), "dpo": float(dpo_c.mean())},
        "logps_rejected": {"sft": float(sft_r.mean()), "dpo": float(dpo_r.mean())},
    }


def judge_table(records: list, sft_ok: list[bool | None], dpo_ok: list[bool | None]) -> dict:
    """{"all": cell, "<axis>": {**cell, "by_lang": {lang: cell}}} with cell = n, pass counts and rates,
    over the records the judge gave a verdict on (not None)."""
    def cell(ix):
        n = len(ix)
        s, d = sum(bool(sft_ok[i]) for i in ix), sum(bool(dpo_ok[i]) for i in ix)
        return {"n": n, "sft_pass": s, "dpo_pass": d, "sft_rate": s / n if n else None, "dpo_rate": d / n if n else None}

    judged = [i for i in range(len(records)) if sft_ok[i] is not None]
    table = {"all": cell(judged)}
    for axis in sorted({str(records[i].axis) for i in judged}):
        ix = [i for i in judged if str(records[i].axis) == axis]
        table[axis] = cell(ix)
        table[axis]["by_lang"] = {lang: cell([i for i in ix if str(records[i].lang) == lang])
                                  for lang in sorted({str(records[i].lang) for i in ix})}
    return table


def sampled_kl(policy, reference, prompts: list[list[int]], *, max_new_tokens: int, seed: int, stop_ids, pad_id: int,
               batch_size: int) -> dict:
    """KL(policy || reference) at the sequence level: answers sampled from `policy` (LoadedModels) at
    temperature 1 with no filters, scored as sampled by both (see `sequence_kl`)."""
    plain = SamplingSettings(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                             repetition_penalty=1.0, seed=seed)
    samples = generate_ids(policy.model, policy.tokenizer, prompts, settings=plain, stop_ids=stop_ids, pad_id=pad_id,
                           batch_size=batch_size)
    rows = list(zip(prompts, samples))
    lp_policy, lens = score_rows(policy.model, rows, pad_id, batch_size=batch_size)
    lp_reference, _ = score_rows(reference.model, rows, pad_id, batch_size=batch_size)
    return sequence_kl(lp_policy, lp_reference, lens, [not y or y[-1] not in stop_ids for y in samples], max_new_tokens)


def sequence_kl(lp_policy: torch.Tensor, lp_reference: torch.Tensor, n_tokens: torch.Tensor,
                truncated: list[bool], max_new_tokens: int) -> dict:
    """KL(pi_policy || pi_reference) at the sequence level from answers sampled from the policy:
    the mean of log pi_policy(y|x) - log pi_reference(y|x), with its standard error."""
    diff = lp_policy - lp_reference
    m = len(diff)
    return {"n_samples": m, "max_new_tokens": max_new_tokens, "level": "sequence",
            "kl_sequence": float(diff.mean()),
            "kl_sequence_stderr": float(diff.std(unbiased=True) / math.sqrt(m)) if m > 1 else 0.0,
            "kl_per_token": float(diff.sum() / n_tokens.sum().clamp(min=1)),
            "mean_answer_tokens": float(n_tokens.mean()),
            "truncated_fraction": sum(truncated) / m}
