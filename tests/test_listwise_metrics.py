"""Ranking metrics of listwise rows (minidpo.losses.listwise.kendall_tau, ndcg) against values computed by
hand in plain math: a perfect and a reversed order, ties on either side, K = 2, padded rows of differing K,
and the rows where a metric is undefined (NaN)."""

from __future__ import annotations

import math

import pytest
import torch

from minidpo.losses.listwise import kendall_tau, ndcg

NAN = float("nan")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def d(position: int) -> float:
    """The discount of a 1-based position."""
    return 1.0 / math.log2(1 + position)


def test_a_perfect_order_is_one_and_the_reversed_order_is_hand_computed():
    rewards = t([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    scores = t([3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0])
    assert kendall_tau(rewards, scores).tolist() == pytest.approx([1.0, -1.0])
    # reversed: gains 3, 2, 1, 0 land on positions 4, 3, 2, 1
    dcg = 0 * d(1) + 1 * d(2) + 2 * d(3) + 3 * d(4)
    ideal = 3 * d(1) + 2 * d(2) + 1 * d(3) + 0 * d(4)
    assert ndcg(rewards, scores).tolist() == pytest.approx([1.0, dcg / ideal])
    assert dcg / ideal == pytest.approx(0.6138, abs=1e-4)  # (1/log2 3 + 1 + 3/log2 5) / (3 + 2/log2 3 + 1/2)


def test_ties_in_rewards_and_in_scores():
    rewards = t([0.5, 0.5, -1.0, 2.0])
    scores = t([2.0, 1.0, 1.0, 0.0])
    # pairs (0,1) tie in rewards; (1,2) tie in scores; (0,2) concordant; (0,3), (1,3), (2,3) discordant:
    # tau-b = (C - D) / sqrt((6 - 1)(6 - 1)) = (1 - 3) / 5
    assert kendall_tau(rewards, scores).item() == pytest.approx(-0.4)
    # ranked by reward: answer 3 (gain 0) first, answers 0 and 1 (gains 2 and 1) share positions 2 and 3,
    # answer 2 (gain 1) last; the ideal order has gains 2, 1, 1, 0
    dcg = 0 * d(1) + (2 + 1) * (d(2) + d(3)) / 2 + 1 * d(4)
    ideal = 2 * d(1) + 1 * d(2) + 1 * d(3) + 0 * d(4)
    assert ndcg(rewards, scores).item() == pytest.approx(dcg / ideal)


def test_tied_rewards_do_not_depend_on_the_answers_order_in_the_record():
    scores = t([2.0, 0.0, 1.0], [0.0, 1.0, 2.0])
    rewards = t([0.3, 0.3, 0.3], [0.3, 0.3, 0.3])  # policy == reference: every reward 0 (here 0.3)
    got = ndcg(rewards, scores).tolist()
    mean = (d(1) + d(2) + d(3)) / 3
    assert got == pytest.approx([3 * mean / (2 * d(1) + 1 * d(2))] * 2)
    assert all(math.isnan(x) for x in kendall_tau(rewards, scores).tolist())  # no order to compare


def test_two_answers():
    scores = t([0.0, 1.0], [0.0, 1.0])
    rewards = t([1.0, 0.0], [-2.0, 5.0])
    assert kendall_tau(rewards, scores).tolist() == pytest.approx([-1.0, 1.0])
    assert ndcg(rewards, scores).tolist() == pytest.approx([1 / math.log2(3), 1.0])


def test_scores_are_gains_above_the_rows_lowest_score():
    """A ranking's scores (K-1..0) and the same order on a 1..5 rating scale shifted: the same NDCG."""
    rewards = t([0.2, 0.9, -0.4])
    a, b = ndcg(rewards, t([2.0, 1.0, 0.0])), ndcg(rewards, t([12.0, 11.0, 10.0]))
    assert a.item() == pytest.approx(b.item())
    # gains 2, 1, 0 ranked 1, 0, 2 by reward
    assert a.item() == pytest.approx((1 * d(1) + 2 * d(2)) / (2 * d(1) + 1 * d(2)))


def test_padded_rows_of_differing_k_equal_each_row_alone():
    rewards = t([0.1, 0.7, -0.2, 0.4], [1.0, -1.0, NAN, NAN])  # padding may hold anything
    scores = t([1.0, 3.0, 0.0, 3.0], [0.0, 5.0, NAN, -7.0])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    tau, gain = kendall_tau(rewards, scores, valid), ndcg(rewards, scores, valid)
    for row, k in ((0, 4), (1, 2)):
        alone = (rewards[row:row + 1, :k], scores[row:row + 1, :k])
        assert tau[row].item() == pytest.approx(kendall_tau(*alone).item())
        assert gain[row].item() == pytest.approx(ndcg(*alone).item())
    assert tau[1].item() == pytest.approx(-1.0) and gain[1].item() == pytest.approx(1 / math.log2(3))
    # row 0: answers 1 and 3 tie in scores; pairs (0,1), (0,2), (0,3), (1,2), (2,3) concordant, (1,3) tied
    # in scores: (5 - 0) / sqrt(6 * 5)
    assert tau[0].item() == pytest.approx(5 / math.sqrt(30))


def test_undefined_rows_are_nan():
    rewards, valid = t([1.0, 2.0, 0.0]), torch.tensor([[True, False, False]])
    assert math.isnan(kendall_tau(rewards, t([1.0, 0.0, 2.0]), valid).item())  # one answer
    assert math.isnan(ndcg(rewards, t([1.0, 0.0, 2.0]), valid).item())
    assert math.isnan(kendall_tau(rewards, t([2.0, 2.0, 2.0])).item())  # every score tied
    assert math.isnan(ndcg(rewards, t([2.0, 2.0, 2.0])).item())
