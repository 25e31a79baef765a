"""Token-budget batches (--max_tokens_per_batch): the plan by hand and over several world sizes, the
objective exact on a real DeepSpeed engine (uneven micro-batches train like one big batch), and
--precompute_ref scoring only the pairs a run trains on."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from minidpo.config import RunConfig, validate
from minidpo.errors import ConfigError
from minidpo.data.plan import budget_steps, padded_cost, rank_micro_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skewed_lengths(n=300, seed=1):
    """Packed row lengths with a long tail: most pairs 40-200 tokens, a few up to 2000."""
    rng = random.Random(seed)
    return [min(2000, max(12, round(100 * math.exp(rng.gauss(0, 0.8))))) for _ in range(n)]


def c8(n):
    return -(-n // 8) * 8


def test_padded_cost_rounds_rows_like_the_collator():
    assert padded_cost(13, 3) == 3 * 16 and padded_cost(16, 1) == 16 and padded_cost(1, 5) == 40


def test_budget_plan_by_hand():
    # rows 100, 30, 30, 30, 30 (104 and 32 positions each): budget 104 -> [100] alone, three 30s (96; a
    # 4th would make 128), the last 30 alone: 3 micro-batches make 1 step of 2, the third is dropped
    lengths = [100, 30, 30, 30, 30]
    steps = budget_steps(lengths, 104, grad_accum=2, world_size=1, seed=0, epoch=0)
    assert len(steps) == 1
    assert sorted(map(len, steps[0])) == [1, 3]
    assert [0] in steps[0]


@pytest.mark.parametrize("world_size, grad_accum", [(1, 1), (2, 1), (3, 2), (4, 3)])
def test_every_rank_takes_the_same_steps_within_the_budget(world_size, grad_accum):
    lengths = skewed_lengths()
    budget = 600
    for epoch in range(3):
        steps = budget_steps(lengths, budget, grad_accum=grad_accum, world_size=world_size, seed=7, epoch=epoch,
                             epochs=3)
        assert steps == budget_steps(lengths, budget, grad_accum=grad_accum, world_size=world_size, seed=7,
                                     epoch=epoch, epochs=3)  # a pure function: resume skips exactly
        per_rank = [rank_micro_batches(steps, r, world_size) for r in range(world_size)]
        assert {len(p) for p in per_rank} == {len(steps) * grad_accum}  # same micro-steps on every rank
        seen = [i for p in per_rank for batch in p for i in batch]
        assert len(seen) == len(set(seen))  # disjoint: no pair twice in an epoch, across ranks
        for batch in (b for p in per_rank for b in p):
            longest = max(lengths[i] for i in batch)
            if longest > budget:
                assert len(batch) == 1  # a pair over the budget travels alone
            else:
                assert len(batch) * c8(longest) <= budget
        # the step's pairs, counted from all ranks' micro-batches, as every rank computes them
        for s, step in enumerate(steps):
            assert sum(len(b) for b in step) == sum(len(b) for r in range(world_size)
                                                    for b in per_rank[r][s * grad_accum:(s + 1) * grad_accum])
        if epoch == 0:
            n_steps = len(steps)
        assert len(steps) == n_steps  # every epoch the same number of steps (the schedule is fixed)
    # short pairs travel in big batches, long ones in small: group_by_length keeps padding low
    sizes = {len(b): max(lengths[i] for i in b) for step in steps for b in step}
    assert max(sizes) >= 4 and sizes[max(sizes)] < sizes[min(sizes)]
    padded = sum(padded_cost(max(lengths[i] for i in b), len(b)) for step in steps for b in step)
    real = sum(lengths[i] for step in steps for b in step for i in b)
    assert real / padded > 0.8


def test_a_pair_longer_than_the_budget_travels_alone():
    lengths = [500, 20, 20, 20, 20, 20, 20, 20]
    steps = budget_steps(lengths, 64, grad_accum=1, world_size=1, seed=0, epoch=0)
    batches = [b for step in steps for b in step]
    assert [0] in batches and all(len(b) == 3 or b == [0] or len(b) < 3 for b in batches)
    assert all(padded_cost(max(lengths[i] for i in b), len(b)) <= 64 for b in batches if b != [0])


def test_too_little_data_for_one_step_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one step of 4 x 2 micro-batches of up to 64 tokens"):
        budget_steps([60] * 5, 64, grad_accum=4, world_size=2, seed=0, epoch=0)


@pytest.mark.parametrize("value", [-1, "lots", 2.5, True])
def test_a_bad_budget_is_one_line_naming_the_setting(tmp_path, tiny_model_dir, value):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = RunConfig(model=tiny_model_dir, data=str(data), output_dir=str(tmp_path / "o"),
                    deepspeed=f"{ROOT}/ds_configs/zero2.json", max_tokens_per_batch=value)
    with pytest.raises(ConfigError, match=r"^--max_tokens_per_batch .*: expected 0 \(off\) or a number of tokens >= 1$"):
        validate(cfg)


# --- on real DeepSpeed engines --------------------------------------------------------------------

def _pairs(path, rows):
    with open(path, "w") as f:
        for prompt, chosen, rejected in rows:
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return str(path)


def _train(tmp_path, name, model, data, **over):
    from minidpo.train import train

    kw = dict(model=model, data=data, output_dir=str(tmp_path / name), deepspeed=f"{ROOT}/ds_configs/zero1.json",
              learning_rate=1e-3, weight_decay=0.1, dtype="fp32", log_interval=1, save_interval=0,
              max_length=128, max_prompt_length=32, beta=0.5)
    kw.update(over)
    train(RunConfig(**kw))
    with open(os.path.join(kw["output_dir"], "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _packed_lengths(model_dir, data, max_length=128, max_prompt_length=32):
    from minidpo.data import load_preference_data
    from minidpo.data.collate import padded_length
    from minidpo.models import load_tokenizer

    dataset = load_preference_data(data, load_tokenizer(model_dir), max_length=max_length,
                                   max_prompt_length=max_prompt_length, cache_dir=None, log=None)
    return [padded_length(dataset[i], True) for i in range(len(dataset))], dataset


@pytest.mark.slow
def test_uneven_token_budget_micro_batches_train_like_one_big_batch(tmp_path, tiny_model_dir):
    """One long pair alone and three short ones together in one step of 2 micro-batches: the step's
    loss is the mean over its 4 pairs, so loss, gradient norm and weights equal a batch of 4."""
    data = _pairs(tmp_path / "four.jsonl", [
        ("What is 3 + 4?", "3 + 4 = 7.", "3 + 4 = 9. " * 6),
        ("What is 5 + 1?", "5 + 1 = 6.", "5 + 1 = 8."),
        ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
        ("What is 6 + 3?", "6 + 3 = 9.", "6 + 3 = 7."),
    ])
    lengths, _ = _packed_lengths(tiny_model_dir, data)
    short = max(lengths[1:])
    budget = 3 * c8(short)
    assert c8(lengths[0]) <= budget < 2 * c8(lengths[0])  # the long pair fits alone, not with another
    steps = budget_steps(lengths, budget, grad_accum=2, world_size=1, seed=42, epoch=0)
    assert len(steps) == 1 and sorted(map(sorted, steps[0])) == [[0], [1, 2, 3]]  # uneven: 1 + 3 pairs

    big = _train(tmp_path, "big", tiny_model_dir, data, batch_size=4, grad_accum=1, max_steps=1)
    budgeted = _train(tmp_path, "budget", tiny_model_dir, data, grad_accum=2, max_tokens_per_batch=budget,
                      max_steps=1)
    assert budgeted[0]["loss"] == pytest.approx(big[0]["loss"], abs=1e-6)
    # a mean per micro-batch would weight the long pair 1/2 instead of 1/4: the gradient norm shows it
    assert budgeted[0]["grad_norm"] == pytest.approx(big[0]["grad_norm"], rel=1e-4)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "big/export/model.safetensors"))
    b = load_file(str(tmp_path / "budget/export/model.safetensors"))
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    trained = json.loads((tmp_path / "budget/summary.json").read_text())["trained"]
    assert trained["pairs"] == 4 and trained["positions"] <= 2 * budget


@pytest.mark.slow
def test_precompute_ref_scores_only_the_pairs_trained_on(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from minidpo.data.plan import batch_plan

    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {a + b + rng.randint(1, 9)}."))
    data = _pairs(tmp_path / "pairs.jsonl", rows)
    cache_dir = tmp_path / "ref_cache"
    monkeypatch.setattr("minidpo.reference.CACHE_DIR", str(cache_dir))
    common = dict(batch_size=2, min_lr_ratio=1.0, deepspeed=f"{ROOT}/ds_configs/zero2.json")
    live = _train(tmp_path, "live", tiny_model_dir, data, max_steps=3, **common)
    capsys.readouterr()
    pre = _train(tmp_path, "pre", tiny_model_dir, data, max_steps=3, precompute_ref=True, **common)
    assert "computed for 6 of the 6 pairs trained on (32 in the data)" in capsys.readouterr().out
    for key in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"):
        assert [r[key] for r in pre] == pytest.approx([r[key] for r in live], rel=1e-5, abs=1e-6), key
    (cached,) = list(cache_dir.iterdir())
    table = torch.load(cached)
    lengths, _ = _packed_lengths(tiny_model_dir, data)
    used = {i for batch in batch_plan(lengths, 2, seed=42, epoch=0)[:3] for i in batch}
    assert set(torch.where(~table.isnan().any(1))[0].tolist()) == used  # exactly the 6 trained pairs
    # a longer run scores only the pairs it adds, and the table keeps the first run's rows
    capsys.readouterr()
    longer = _train(tmp_path, "longer", tiny_model_dir, data, max_steps=5, precompute_ref=True, **common)
    assert "computed for 4 of the 10 pairs trained on" in capsys.readouterr().out
    assert [r["loss"] for r in longer[:3]] == pytest.approx([r["loss"] for r in pre], abs=1e-6)
    assert torch.equal(torch.load(cached)[sorted(used)], table[sorted(used)])
