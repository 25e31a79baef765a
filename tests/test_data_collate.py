"""collate_pairs and batch_plan: shapes, padding, ordering, determinism, rank sharding."""

from __future__ import annotations

import random

import pytest
import torch

from minidpo.data import TokenizedPair, batch_plan, collate_pairs
from minidpo.logprobs import sequence_logprobs

PAD = 0


def _pairs():
    return [
        TokenizedPair([5, 6, 7], [10, 11, 2], [12, 2]),
        TokenizedPair([5, 8], [13, 14, 15, 16, 17, 2], [18, 2]),
    ]


def test_collate_layout_chosen_first_and_masks():
    b = collate_pairs(_pairs(), pad_token_id=PAD)
    assert set(b) == {"input_ids", "attention_mask", "loss_mask"}
    for t in b.values():
        assert t.dtype == torch.long and t.shape == (4, 8)  # longest is 2 + 6 = 8, already a multiple of 8
    assert b["input_ids"].tolist() == [
        [5, 6, 7, 10, 11, 2, PAD, PAD],  # pair 0 chosen
        [5, 8, 13, 14, 15, 16, 17, 2],  # pair 1 chosen
        [5, 6, 7, 12, 2, PAD, PAD, PAD],  # pair 0 rejected
        [5, 8, 18, 2, PAD, PAD, PAD, PAD],  # pair 1 rejected
    ]
    assert b["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 1, 0, 0], [1] * 8, [1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
    assert b["loss_mask"].tolist() == [
        [0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]


def test_collate_pads_to_multiple_not_max_length():
    pairs = [TokenizedPair([1] * 4, [2] * 5, [3])]  # longest 9
    assert collate_pairs(pairs, PAD)["input_ids"].shape == (2, 16)
    assert collate_pairs(pairs, PAD, pad_to_multiple_of=1)["input_ids"].shape == (2, 9)
    assert collate_pairs(pairs, PAD, pad_to_multiple_of=64)["input_ids"].shape == (2, 64)


def test_collate_mask_selects_response_logprobs():
    """loss_mask follows minidpo.logprobs: summing with it scores exactly the response tokens."""
    b = collate_pairs(_pairs(), PAD)
    V = 20
    logits = torch.randn(4, b["input_ids"].shape[1], V)
    logps, n = sequence_logprobs(logits, b["input_ids"], b["loss_mask"])
    assert n.tolist() == [3, 6, 2, 2]
    lp = torch.log_softmax(logits, -1)
    ids = b["input_ids"][0]
    expected = sum(lp[0, t - 1, ids[t]] for t in (3, 4, 5))
    assert torch.allclose(logps[0], expected)


def test_collate_errors():
    with pytest.raises(ValueError, match="pad_token"):
        collate_pairs(_pairs(), None)
    with pytest.raises(ValueError):
        collate_pairs([], 0)


_rng = random.Random(1)
LENGTHS = [_rng.randint(5, 500) for _ in range(1003)]


def test_batch_plan_deterministic_and_epoch_dependent():
    a = batch_plan(LENGTHS, 8, seed=3, epoch=0)
    assert a == batch_plan(LENGTHS, 8, seed=3, epoch=0)
    assert a != batch_plan(LENGTHS, 8, seed=3, epoch=1)
    assert a != batch_plan(LENGTHS, 8, seed=4, epoch=0)
    assert all(len(b) == 8 for b in a)
    assert len(a) == 1003 // 8
    flat = [i for b in a for i in b]
    assert len(set(flat)) == len(flat)  # no pair twice


@pytest.mark.parametrize("group_by_length", [True, False])
def test_batch_plan_two_ranks_equal_and_disjoint(group_by_length):
    plans = [batch_plan(LENGTHS, 4, seed=0, epoch=2, rank=r, world_size=2, group_by_length=group_by_length)
             for r in range(2)]
    assert len(plans[0]) == len(plans[1]) == 1003 // 8
    assert all(len(b) == 4 for p in plans for b in p)
    sets = [{i for b in p for i in b} for p in plans]
    assert not sets[0] & sets[1]
    assert len(sets[0]) + len(sets[1]) == 8 * (1003 // 8)  # only the remainder (< one step) is left out


def test_batch_plan_groups_lengths():
    def padding_waste(plan):
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in plan)

    grouped = batch_plan(LENGTHS, 8, seed=0, epoch=0)
    ungrouped = batch_plan(LENGTHS, 8, seed=0, epoch=0, group_by_length=False)
    assert padding_waste(grouped) < padding_waste(ungrouped) / 4
    # batch order is shuffled, not sorted by length
    maxima = [max(LENGTHS[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_batch_plan_resume_is_a_suffix():
    full = batch_plan(LENGTHS, 8, seed=5, epoch=1, rank=1, world_size=2)
    assert batch_plan(LENGTHS, 8, seed=5, epoch=1, rank=1, world_size=2)[10:] == full[10:]


def test_batch_plan_too_little_data():
    with pytest.raises(ValueError, match="fewer than one step"):
        batch_plan([1, 2, 3], 2, seed=0, epoch=0, world_size=2)
