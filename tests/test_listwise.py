"""Listwise data (K ranked answers per prompt) and its losses: all-pairs DPO against the same pairs
trained as pairs, Plackett-Luce against hand values in plain math, the data format and its errors, and
the K-answer packed forward against each answer's own sequence on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minidpo.data import detect_format
from minidpo.data.formats import iter_pairs
from minidpo.errors import DataError
from minidpo.losses import listwise_loss, pair_accuracy, preference_loss


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(x):
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------- losses

def test_listwise_pairs_equals_the_same_pairs_trained_as_pairs_with_ties_and_padding():
    policy = t([-3.0, -5.0, -4.0, 0.0], [-2.0, -2.5, -6.0, -1.0])
    ref = t([-3.5, -4.5, -4.0, 0.0], [-2.2, -2.0, -5.0, -1.5])
    scores = t([2.0, 1.0, 1.0, 0.0], [0.5, 3.0, 0.5, 1.0])  # row 0: answers 1 and 2 tie; its answer 3 is padding
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    beta = 0.5
    loss, rewards = listwise_loss("listwise_pairs", policy, ref, scores, valid, beta=beta)
    pairs = [(0, 0, 1), (0, 0, 2),  # row 0: 0 > 1, 0 > 2 (1 and 2 tie: no pair)
             (1, 1, 0), (1, 1, 2), (1, 1, 3), (1, 3, 0), (1, 3, 2)]  # row 1: 1 > 3 > 0 = 2
    b, w, l = (torch.tensor(x) for x in zip(*pairs))
    as_pairs, _, _ = preference_loss(policy[b, w], policy[b, l], ref[b, w], ref[b, l], beta=beta, loss_type="sigmoid")
    assert loss.item() == pytest.approx(as_pairs.mean().item(), abs=1e-6)
    hand = sum(softplus(-beta * ((policy[r, i] - ref[r, i]) - (policy[r, j] - ref[r, j])).item())
               for r, i, j in pairs) / len(pairs)
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    right = sum((rewards[r, i] > rewards[r, j]).item() for r, i, j in pairs)
    assert pair_accuracy(rewards, scores, valid).item() == pytest.approx(right / len(pairs))


def test_listwise_pairs_starts_at_ln2_when_policy_is_the_reference():
    x = t([-3.0, -4.0, -5.0])
    policy = x.clone().requires_grad_()
    loss, _ = listwise_loss("listwise_pairs", policy, x, t([3.0, 2.0, 1.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()  # the better answers are pushed up, the worst down
    assert policy.grad[0, 0] < 0 < policy.grad[0, 2]


def test_plackett_luce_matches_hand_values_with_ties_ordered_by_index():
    policy = t([-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0])
    ref = t([-1.5, -1.0, -0.5], [-3.0, -2.0, -1.0])
    scores = t([1.0, 1.0, 3.0], [0.0, 2.0, 1.0])  # row 0: 2 first, then 0 and 1 tied (0 before 1)
    beta = 2.0
    loss, _ = listwise_loss("plackett_luce", policy, ref, scores, beta=beta)

    def nll(r, order):
        return sum(-(r[order[k]] - math.log(sum(math.exp(r[u]) for u in order[k:]))) for k in range(len(order)))

    r0 = [beta * (p - q) for p, q in zip([-1.0, -2.0, -0.5], [-1.5, -1.0, -0.5])]
    r1 = [beta * (p - q) for p, q in zip([-3.0, -1.0, -2.0], [-3.0, -2.0, -1.0])]
    hand = (nll(r0, [2, 0, 1]) + nll(r1, [1, 2, 0])) / 2
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    # policy == reference: every order is equally likely, NLL = log K!
    same, _ = listwise_loss("plackett_luce", ref, ref, scores, beta=beta)
    assert same.item() == pytest.approx(math.log(6), abs=1e-6)


def test_plackett_luce_padding_counts_as_a_shorter_list():
    policy, ref = t([-1.0, -2.0, -7.0]), t([-1.2, -1.5, -3.0])
    valid = torch.tensor([[True, True, False]])
    loss, _ = listwise_loss("plackett_luce", policy.requires_grad_(), ref, t([1.0, 2.0, 9.0]), valid, beta=1.0)
    r = [0.2, -0.5]
    assert loss.item() == pytest.approx(-(r[1] - math.log(math.exp(r[0]) + math.exp(r[1]))), abs=1e-6)
    loss.backward()
    assert torch.isfinite(policy.grad).all() and policy.grad[0, 2] == 0


def test_unknown_listwise_loss_is_refused():
    with pytest.raises(ValueError, match="listwise_pairs, plackett_luce"):
        listwise_loss("sigmoid", t([0.0, 1.0]), t([0.0, 1.0]), t([1.0, 0.0]), beta=0.1)


# ------------------------------------------------------------------------------------------- data

def _write(tmp_path, records, name="list.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _pairs(path):
    out = []
    for _, fmt, p in iter_pairs(path):
        if isinstance(p, DataError):
            raise p
        out.append((fmt, p))
    return out


def test_listwise_records_are_detected_with_scores_or_a_ranking_and_k_may_differ(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "Q1", "responses": ["a", "b", "c"], "scores": [1, 3, 3]},
        {"prompt": "Q2", "responses": ["x", {"role": "assistant", "content": "y"}], "ranking": [1, 0]},
        {"prompt": "Q3", "responses": ["p", "q", "r", "s"], "scores": [0.5, 0.1, 0.9, 0.2]},
    ])
    got = _pairs(path)
    assert detect_format({"prompt": "Q", "responses": ["a", "b"], "scores": [1, 0]}) == "listwise"
    assert [fmt for fmt, _ in got] == ["listwise"] * 3
    (_, a), (_, b), (_, c) = got
    assert [m["content"] for m in a.responses] == ["a", "b", "c"] and a.scores == (1.0, 3.0, 3.0)
    assert (a.chosen, a.rejected) == ("b", "a")  # ties: the earlier answer ranks higher
    assert b.scores == (0.0, 1.0) and (b.chosen, b.rejected) == ("y", "x")
    assert len(c.responses) == 4 and (c.chosen, c.rejected) == ("r", "q")
    assert a.prompt_messages == [{"role": "user", "content": "Q1"}]


@pytest.mark.parametrize("record, field, words", [
    ({"prompt": "Q", "responses": ["a", "b", "c"], "scores": [1, 2]}, "scores", "2 scores for 3 responses"),
    ({"prompt": "Q", "responses": ["a"], "scores": [1]}, "responses", "at least 2"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [1, "high"]}, "scores[1]", "finite number"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [1, True]}, "scores[1]", "finite number"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]}, "ranking", "each index 0..1 once"),
    ({"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "ranking", "2 indices for 3"),
    ({"prompt": "Q", "responses": ["a", ""], "scores": [1, 0]}, "responses[1]", "empty"),
])
def test_listwise_data_errors_name_file_line_and_field(tmp_path, record, field, words):
    good = {"prompt": "Q0", "responses": ["a", "b"], "scores": [1, 0]}
    path = _write(tmp_path, [good, record])
    with pytest.raises(DataError) as e:
        _pairs(path)
    message = str(e.value)
    assert f"list.jsonl:2: field \"{field}\":" in message and words in message and "\n" not in message


# ------------------------------------------------------------------------------------ the packed forward

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_listwise_row_equals_each_answer_as_its_own_sequence_and_the_pairs_as_pairs(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    from minidpo.data import TokenizedPair, collate_pairs
    from minidpo.data.collate import collate_listwise
    from minidpo.data.listwise import TokenizedList
    from minidpo.listwise_logps import listwise_logps
    from minidpo.logprobs import concatenated_logps

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    rows = [TokenizedList([5, 9, 14, 3], [[20, 21, 22, 2], [30, 31, 2], [40, 2]], [2.0, 0.5, 1.0]),
            TokenizedList([7, 8], [[50, 51, 2], [60, 61, 62, 63, 2]], [0.0, 1.0])]
    batch = collate_listwise(rows, pad_token_id=0)
    logps = listwise_logps(model, batch)
    # every answer as its own [prompt, answer] sequence (the chosen half of collate_pairs)
    alone = [[concatenated_logps(model, collate_pairs([TokenizedPair(r.prompt_ids, a, [1])], 0), "sum")[0].item()
              for a in r.answer_ids] for r in rows]
    assert logps[0].tolist() == pytest.approx(alone[0], abs=1e-4)
    assert logps[1, :2].tolist() == pytest.approx(alone[1], abs=1e-4) and logps[1, 2] == 0

    ref = logps.detach() + torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, 0.0]])
    loss, _ = listwise_loss("listwise_pairs", logps, ref, batch["scores"], batch["valid"], beta=0.1)
    pairs = [(0, 0, 2), (0, 0, 1), (0, 2, 1), (1, 1, 0)]  # (row, better, worse)
    pair_batch = collate_pairs([TokenizedPair(rows[n].prompt_ids, rows[n].answer_ids[i], rows[n].answer_ids[j])
                                for n, i, j in pairs], 0)
    chosen, rejected, _ = concatenated_logps(model, pair_batch, "sum")
    b, w, l = (torch.tensor(x) for x in zip(*pairs))
    as_pairs, _, _ = preference_loss(chosen, rejected, ref[b, w], ref[b, l], beta=0.1, loss_type="sigmoid")
    assert loss.item() == pytest.approx(as_pairs.mean().item(), abs=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    pair_grads = torch.autograd.grad(as_pairs.mean(), list(model.parameters()))
    for g, h in zip(grads, pair_grads):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-3)


def test_listwise_data_is_tokenized_truncated_and_cached_with_its_scores(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from minidpo.data import load_preference_data
    from minidpo.data.listwise import TokenizedList

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = _write(tmp_path, [{"prompt": "Q", "responses": ["a", "bb", "a very long answer " * 20], "scores": [1, 2, 0]},
                             {"prompt": "R", "responses": ["x", "y"], "ranking": [1, 0]}])
    for cached in (False, True):
        ds = load_preference_data(path, tok, max_length=48, max_prompt_length=16, cache_dir=tmp_path / "cache",
                                  log=None)
        assert ds.stats.from_cache is cached
        assert [type(r) for r in ds] == [TokenizedList, TokenizedList]
        first, second = ds
        assert [len(a) for a in first.answer_ids][2] == 48 - len(first.prompt_ids)  # cut like a pair's answer
        assert ds.stats.response_truncated == 1
        assert first.scores == [1.0, 2.0, 0.0] and second.scores == [0.0, 1.0]
        pair = load_preference_data(_write(tmp_path, [{"prompt": "Q", "chosen": "bb", "rejected": "a"}], "pair.jsonl"),
                                    tok, max_length=48, max_prompt_length=16, cache_dir=None, log=None)[0]
        assert (first.prompt_ids, first.answer_ids[1], first.answer_ids[0]) == \
            (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)  # each answer tokenized as a pair's
        assert ds.lengths[0] == len(first.prompt_ids) + sum(map(len, first.answer_ids))
        assert ds.labels == [None, None]


def test_data_inspect_shows_a_list_with_its_scores(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from minidpo.data.inspect import inspect_report

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = _write(tmp_path, [{"prompt": "Q", "responses": ["a", "bb", "c"], "scores": [1, 2.5, 0]}])
    report, n = inspect_report(path, tok, color=False)
    assert n == 1
    assert "format:   listwise" in report and "list 0 (" in report and "3 answers in one row" in report
    assert "--- answer 1 (score 2.5, " in report


def _lists_file(tmp_path, n=24):
    """n lists of sums: the sum best, a wrong sum next, a refusal last (K = 3 or 4, a tie in the 4-answer ones)."""
    import random

    rng = random.Random(0)
    records = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        responses = [f"I do not know what {a} + {b} is.", f"{a} + {b} = {a + b}.", f"{a} + {b} = {a + b + 7}."]
        scores = [0, 2, 1]
        if i % 2:
            responses.append(f"I cannot say what {a} + {b} is.")
            scores.append(0)
        records.append({"prompt": f"What is {a} + {b}?", "responses": responses, "scores": scores})
    return str(_write(tmp_path, records, "lists.jsonl"))


def _cfg(tmp_path, model, data, **over):
    import os

    from minidpo.config import RunConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    kw = dict(model=model, data=data, output_dir=str(tmp_path / "run"), deepspeed=f"{root}/ds_configs/zero2.json",
              learning_rate=1e-3, weight_decay=0.1, batch_size=4, epochs=2, log_interval=1, save_interval=0,
              max_length=64, max_prompt_length=32, beta=0.5, loss_type="listwise_pairs")
    kw.update(over)
    return RunConfig(**kw)


@pytest.mark.parametrize("over, message", [
    (dict(sync_ref_model=True), "--sync_ref_model is not supported with loss_type listwise_pairs"),
    (dict(loss_type="plackett_luce", ld_alpha=0.5), "ld_alpha only applies to loss_type"),
    (dict(use_weighting=True), "use_weighting does not apply to loss_type 'listwise_pairs'"),
    (dict(loss_type="listwise_pairs,sft"), "loss_type listwise_pairs trains on listwise data and takes no other"),
    (dict(loss_type="plackett_luce,sigmoid"), "loss_type plackett_luce trains on listwise data and takes no other"),
    (dict(rpo_alpha=1.0), "takes no other term \\(nor rpo_alpha\\)"),
    (dict(label_smoothing=0.1), "label_smoothing only applies to loss_type"),
])
def test_listwise_run_settings_are_one_line_config_errors(tmp_path, tiny_model_dir, over, message):
    from minidpo.config import validate
    from minidpo.errors import ConfigError

    data = _lists_file(tmp_path, 2)
    validate(_cfg(tmp_path, tiny_model_dir, data))
    validate(_cfg(tmp_path, tiny_model_dir, data, loss_type="plackett_luce"))
    # the reference computed once and the token budget work for lists (tests/test_listwise_reference.py, _budget.py)
    validate(_cfg(tmp_path, tiny_model_dir, data, precompute_ref=True, max_tokens_per_batch=512))
    with pytest.raises(ConfigError, match=message) as e:
        validate(_cfg(tmp_path, tiny_model_dir, data, **over))
    assert "\n" not in str(e.value)


def test_listwise_losses_refuse_pairs_and_pair_losses_refuse_lists_naming_file_and_line(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from minidpo.data import load_preference_data
    from minidpo.errors import ConfigError
    from minidpo.train import check_data_kind

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lists = load_preference_data(_lists_file(tmp_path, 2), tok, max_length=64, cache_dir=None, log=None)
    pairs = load_preference_data(_write(tmp_path, [{"prompt": "Q", "chosen": "a", "rejected": "b"}], "pairs.jsonl"),
                                 tok, max_length=64, cache_dir=None, log=None)
    check_data_kind(_cfg(tmp_path, tiny_model_dir, "x"), lists)
    check_data_kind(_cfg(tmp_path, tiny_model_dir, "x", loss_type="sigmoid"), pairs)
    with pytest.raises(ConfigError, match=r"pairs\.jsonl:1: not a listwise record, but loss_type plackett_luce"):
        check_data_kind(_cfg(tmp_path, tiny_model_dir, "x", loss_type="plackett_luce"), pairs)
    with pytest.raises(ConfigError, match=r"lists\.jsonl:1: a listwise record .*only loss_type listwise_pairs or "
                                          "plackett_luce"):
        check_data_kind(_cfg(tmp_path, tiny_model_dir, "x", loss_type="sigmoid"), lists)


def _train(cfg) -> list[dict]:
    import os

    from minidpo.train import train

    train(cfg)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("over", [
    dict(),  # ZeRO-2, a reference engine
    dict(lora_r=4, lora_alpha=8.0, dtype="fp32", learning_rate=1e-2),  # the adapter-off reference
])
def test_listwise_pairs_trains_on_the_engine(tmp_path, tiny_model_dir, over):
    rows = _train(_cfg(tmp_path, tiny_model_dir, _lists_file(tmp_path), **over))
    assert len(rows) == 12  # 24 lists, 4 a step, 2 epochs
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # every ordered pair at policy == reference
    assert rows[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert all(math.isfinite(r["loss"]) for r in rows)
    start, end = (sum(r["loss"] for r in part) / 4 for part in (rows[:4], rows[-4:]))
    assert end < start - 0.02
    assert sum(r["rewards/chosen"] - r["rewards/rejected"] for r in rows[-4:]) > 0  # best above worst
    assert sum(r["rewards/accuracies"] for r in rows[-4:]) / 4 > 0.5
    # the ranking metrics: undefined at step 0 (every reward ties at policy == reference), then in range and
    # better than chance once the rewards order the lists
    assert "listwise/kendall_tau" not in rows[0]
    late = [r for r in rows[-4:] if "listwise/kendall_tau" in r]
    assert late and all(-1 <= r["listwise/kendall_tau"] <= 1 and 0 <= r["listwise/ndcg"] <= 1 for r in late)
    assert sum(r["listwise/kendall_tau"] for r in late) > 0


@pytest.mark.slow
def test_plackett_luce_starts_at_the_mean_log_k_factorial_and_falls(tmp_path, tiny_model_dir):
    # one batch of all 8 lists a step (4 of K = 3, 4 of K = 4), 12 steps
    rows = _train(_cfg(tmp_path, tiny_model_dir, _lists_file(tmp_path, 8), loss_type="plackett_luce", batch_size=8,
                       epochs=12))
    assert len(rows) == 12
    assert rows[0]["loss"] == pytest.approx((4 * math.log(6) + 4 * math.log(24)) / 8, abs=1e-4)
    start, end = (sum(r["loss"] for r in part) / 4 for part in (rows[:4], rows[-4:]))
    assert end < start - 0.02
