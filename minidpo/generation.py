"""Batched sampling from a causal LM for chat prompts: left padding, KV cache, seeded, stops at EOS.

    generate(model, tokenizer, prompts_messages, max_new_tokens=128, temperature=0.7, top_p=0.95,
             top_k=0, repetition_penalty=1.0, seed=0, batch_size=16) -> list[str]

Prompts are tokenized exactly as the trainer tokenizes them (`minidpo.data.encode_prompt_response`),
so the model continues from the same "<|im_start|>assistant\\n" it was trained to answer after.
Sampling draws from a `torch.Generator` seeded per batch (`seed`, batch index), so the same call
gives the same answers, whatever else the process did with torch's global RNG. `temperature == 0`
is greedy decoding. A row stops at the tokenizer's EOS (ChatML: "<|im_end|>"); the loop stops when
every row has stopped or after `max_new_tokens`.
"""

from __future__ import annotations

import inspect

import torch


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _cache_arg(model) -> str:
    """Name of the KV-cache argument: `cache` in recent transformers 5 releases, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompt_ids_for(tokenizer, messages: list[dict], encoder=None) -> list[int]:
    """Token ids of a chat prompt, ending where the assistant's answer starts (as in training).

    `encoder`: a `minidpo.data.ChatEncoder(tokenizer)` to reuse over many prompts (optional)."""
    from minidpo.data import ChatEncoder

    encoder = encoder or ChatEncoder(tokenizer)
    return [int(t) for t in encoder.encode_prompt_response(messages, "")[0]]


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. logits: (B, V) float32."""
    if top_k and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already in the row (prompt or answer). seen: (B, V) bool."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts_ids: list[list[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[int]]:
    """New token ids for each prompt (ending with EOS when the row stopped by itself)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = _device(model)
    cache_arg = _cache_arg(model)
    was_training = model.training
    model.eval()
    results: list[list[int]] = []
    for b, start in enumerate(range(0, len(prompts_ids), batch_size)):
        rows = prompts_ids[start:start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's last prompt token is at the end
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r):] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        seen = torch.zeros((len(rows), model.config.vocab_size), dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, attention_mask.bool())
        gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + b)

        new = torch.empty((len(rows), 0), dtype=torch.long, device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        past, step_ids, step_pos = None, input_ids, position_ids
        for _ in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=step_pos,
                        use_cache=True, logits_to_keep=1, **{cache_arg: past})
            past = getattr(out, cache_arg)
            logits = _repetition_penalty(out.logits[:, -1, :].float(), seen, repetition_penalty)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(_filter_logits(logits / temperature, top_k, top_p), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new = torch.cat([new, nxt[:, None]], dim=1)
            seen[torch.arange(len(rows), device=device), nxt] = True
            done |= nxt == eos
            if bool(done.all()):
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(nxt)[:, None]], dim=1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        for row in new.tolist():
            results.append(row[: row.index(eos) + 1] if eos in row else row)
    model.train(was_training)
    return results


def decode_answer(tokenizer, ids: list[int]) -> str:
    """Text of generated ids, without the EOS and other special tokens."""
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def generate(
    model,
    tokenizer,
    prompts_messages: list[list[dict]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """One answer per chat prompt (a list of {"role", "content"} messages ending with a user turn).

    Deterministic for a given (model, prompts, settings, seed, batch_size); greedy when temperature == 0.
    """
    from minidpo.data import ChatEncoder

    encoder = ChatEncoder(tokenizer)
    prompts_ids = [prompt_ids_for(tokenizer, m, encoder) for m in prompts_messages]
    ids = generate_ids(model, tokenizer, prompts_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                       batch_size=batch_size)
    return [decode_answer(tokenizer, x) for x in ids]
