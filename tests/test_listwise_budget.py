"""--max_tokens_per_batch on listwise rows: a list costs its packed row [prompt, answer_1..K], padded as
collate_listwise pads it (the pairs' rule); a list over the budget travels alone. The plan against hand
counts, then a real DeepSpeed run whose uneven micro-batches train like one batch of all its lists."""

from __future__ import annotations

import json
import math

import pytest

from minidpo.data.collate import collate_listwise, padded_length
from minidpo.data.listwise import TokenizedList
from minidpo.data.plan import Batching, budget_steps, padded_cost

from test_listwise import _cfg, _train, _write


def _row(prompt: int, *answers: int) -> TokenizedList:
    return TokenizedList(list(range(1, prompt + 1)), [[7] * n for n in answers],
                         [float(k) for k in range(len(answers))])


def test_a_list_costs_its_packed_row_padded_like_the_collator():
    rows = [_row(10, 20, 25, 30),  # 10 + 75 = 85 tokens: a row of 88 positions
            _row(6, 4, 5),  # 15 -> 16
            _row(5, 3, 3, 3),  # 14 -> 16
            _row(4, 7, 2)]  # 13 -> 16
    lengths = [padded_length(r, True) for r in rows]
    assert lengths == [85, 15, 14, 13] == [padded_length(r, False) for r in rows]  # one row, packed or not
    budget = 48  # three short lists (3 x 16); the long list exceeds it and travels alone
    steps = budget_steps(lengths, budget, grad_accum=2, world_size=1, seed=0, epoch=0, unit="lists")
    assert len(steps) == 1 and sorted(map(sorted, steps[0])) == [[0], [1, 2, 3]]
    for batch in steps[0]:
        collated = collate_listwise([rows[i] for i in batch], pad_token_id=0)
        positions = collated["input_ids"].numel()
        assert positions == padded_cost(max(lengths[i] for i in batch), len(batch))
        assert positions == (88 if batch == [0] else 48)  # the long list alone is over the budget
    plan = Batching(4, 2, budget, 0, 1, unit="lists").epoch_micro_batches(lengths, lengths, 0, 0, 1)
    assert sorted(map(sorted, plan)) == [[0], [1, 2, 3]]
    # a budget that cannot fill a step names lists, not pairs
    with pytest.raises(ValueError, match="^4 lists make fewer than one step of 4 x 1 micro-batches"):
        Batching(4, 4, budget, 0, 1, unit="lists").epoch_micro_batches(lengths, lengths, 0, 0, 1)
    with pytest.raises(ValueError, match="^only 4 lists: fewer than one step of batch_size 8"):
        Batching(8, 1, 0, 0, 1, unit="lists").epoch_micro_batches(lengths, lengths, 0, 0, 1)


@pytest.mark.slow
def test_uneven_budget_micro_batches_of_lists_train_like_one_batch(tmp_path, tiny_model_dir, capsys):
    """plackett_luce (a mean over lists): one long list alone and three short ones together in each step of
    2 micro-batches train like a batch of all 4 lists: same losses, gradient norms and weights."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from minidpo.data import load_preference_data

    data = str(_write(tmp_path, [
        {"prompt": "What is 3 + 4?", "responses": ["3 + 4 = 7. " * 6, "3 + 4 = 9. " * 6, "No idea. " * 6],
         "scores": [2, 1, 0]},
        {"prompt": "What is 5 + 1?", "responses": ["5 + 1 = 6.", "5 + 1 = 8."], "scores": [1, 0]},
        {"prompt": "What is 2 + 2?", "responses": ["2 + 2 = 4.", "2 + 2 = 5.", "I cannot say."], "scores": [2, 1, 0]},
        {"prompt": "What is 6 + 3?", "responses": ["6 + 3 = 7.", "6 + 3 = 9."], "scores": [0, 1]},
    ], "four.jsonl"))
    ds = load_preference_data(data, AutoTokenizer.from_pretrained(tiny_model_dir), max_length=64,
                              max_prompt_length=32, cache_dir=None, log=None)
    lengths = [padded_length(r, True) for r in ds]
    assert lengths == [len(r.prompt_ids) + sum(map(len, r.answer_ids)) for r in ds]
    budget = 3 * padded_cost(max(lengths[1:]), 1)
    assert padded_cost(lengths[0], 2) > budget  # the long list goes alone, the short ones together
    (step,) = budget_steps(lengths, budget, grad_accum=2, world_size=1, seed=42, epoch=0, unit="lists")
    assert sorted(map(sorted, step)) == [[0], [1, 2, 3]]

    common = dict(loss_type="plackett_luce", dtype="fp32", epochs=2, max_steps=2)
    big = _train(_cfg(tmp_path / "big", tiny_model_dir, data, batch_size=4, **common))
    capsys.readouterr()
    budgeted = _train(_cfg(tmp_path / "budget", tiny_model_dir, data, grad_accum=2, max_tokens_per_batch=budget,
                           **common))
    assert "minidpo: 4 lists of 2-3 answers (10 answers), 1 rank(s), 2 optimizer steps" in capsys.readouterr().out
    assert big[0]["loss"] == pytest.approx((2 * math.log(6) + 2 * math.log(2)) / 4, abs=1e-5)  # mean log K!
    # (not rewards/accuracies: a micro-batch's share of ordered pairs, weighted by its lists, depends on the split)
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in budgeted] == pytest.approx([r[key] for r in big], rel=1e-4, abs=1e-6), key
    a, b = (load_file(str(tmp_path / name / "run/export/model.safetensors")) for name in ("big", "budget"))
    base = load_file(f"{tiny_model_dir}/model.safetensors")
    assert not (a["model.layers.0.mlp.up_proj.weight"] == base["model.layers.0.mlp.up_proj.weight"]).all()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-5, k
    summary = json.loads((tmp_path / "budget/run/summary.json").read_text())
    assert (summary["lists"], summary["answers"], summary["pairs"]) == (4, 10, 4)
    assert summary["trained"]["lists"] == summary["trained"]["pairs"] == 8  # 2 steps of all 4 lists
    assert summary["trained"]["positions"] <= 2 * 2 * budget
