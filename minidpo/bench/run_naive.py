"""A MiniMind-style DPO loop (like MiniMind's train_dpo.py): every pair padded to max_length, the reference
forward on every step, a full-vocabulary log_softmax, autocast over fp32 weights, torch AdamW."""

from __future__ import annotations

import time

from minidpo.bench.settings import Settings


def run(paths: dict, s: Settings, out_dir: str, order=None) -> dict:
    import contextlib
    import random

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minidpo.data import load_preference_data

    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    data = load_preference_data(paths["data"], tokenizer, max_length=s.max_length,
                                max_prompt_length=s.max_prompt_length, log=lambda *a: None)
    torch.manual_seed(s.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).to(device)
    ref = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).to(device)
    ref.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.0)
    if order is None:
        indices = list(range(len(data)))
        random.Random(s.seed).shuffle(indices)
        order = [indices[i:i + s.batch_size] for i in range(0, len(indices) - s.batch_size + 1, s.batch_size)]
    if s.max_steps > 0:
        order = order[:s.max_steps]
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if s.dtype == "bf16" else contextlib.nullcontext())

    def logps(logits, ids, mask):
        per_token = torch.log_softmax(logits.float(), dim=-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (per_token * mask[:, 1:]).sum(-1)

    losses, positions, real = [], 0, 0
    start = time.perf_counter()
    for batch in order:
        pairs = [data[i] for i in batch]
        rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
        ids = torch.full((len(rows), s.max_length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), s.max_length)
        for n, (row, p) in enumerate(zip(rows, pairs + pairs)):
            ids[n, :len(row)] = torch.tensor(row)
            mask[n, len(p.prompt_ids):len(row)] = 1.0
        ids, mask = ids.to(device), mask.to(device)
        positions += ids.numel()
        real += sum(len(r) for r in rows)
        with autocast:
            policy = logps(model(input_ids=ids).logits, ids, mask)
            with torch.no_grad():
                reference = logps(ref(input_ids=ids).logits, ids, mask)
        ratio = (policy - reference).view(2, -1)
        loss = -F.logsigmoid(s.beta * (ratio[0] - ratio[1])).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    return {"seconds": time.perf_counter() - start, "pairs": len(order) * s.batch_size, "steps": len(order),
            "losses": losses, "positions": positions, "real_positions": real,
            "tokenized": [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in data]}
