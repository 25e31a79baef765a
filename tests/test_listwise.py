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


def test_the_trainer_refuses_listwise_data_instead_of_training_best_vs_worst(tmp_path):
    from minidpo.data import load_preference_data

    path = _write(tmp_path, [{"prompt": "Q", "responses": ["a", "b", "c"], "scores": [1, 2, 0]}])
    with pytest.raises(DataError, match=r"list\.jsonl:1: a listwise record") as e:
        load_preference_data(path, None, max_length=64, cache_dir=None, log=None)
    assert "\n" not in str(e.value)
