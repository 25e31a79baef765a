"""The arena's leaderboard against strengths computed by hand (plain `math`) on small vote tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app/` lives at the repo root

from app.leaderboard import ELO_SCALE, leaderboard, read_battles  # noqa: E402
from minidpo.errors import DataError  # noqa: E402


def battles(a, b, outcome, n, tokens=None):
    return [{"A": a, "B": b, "outcome": outcome, "tokens": tokens or {}} for _ in range(n)]


def test_three_models_with_exact_bradley_terry_odds():
    # A beats B 2:1, B beats C 2:1, A beats C 4:1 -> pi_A : pi_B : pi_C = 4 : 2 : 1 fits every pair exactly
    # (4/(4+2) = 2/3, 2/(2+1) = 2/3, 4/(4+1) = 4/5), so the maximum-likelihood strengths are ln 4, ln 2, 0
    table = (battles("A", "B", "A", 2) + battles("A", "B", "B", 1) + battles("B", "C", "A", 2)
             + battles("C", "B", "A", 1) + battles("C", "A", "B", 4) + battles("A", "C", "B", 1))
    board = leaderboard(table, penalty=0.0, rounds=0)
    assert board.names == ["A", "B", "C"]
    mean = (math.log(4) + math.log(2) + 0) / 3
    for name, s in (("A", math.log(4)), ("B", math.log(2)), ("C", 0.0)):
        assert board.rating[board.names.index(name)] == pytest.approx(1000 + ELO_SCALE * (s - mean), abs=1e-6)
    assert board.votes == [8, 6, 8]
    assert board.win_rate[0] == [None, pytest.approx(2 / 3), pytest.approx(4 / 5)]
    assert board.win_rate[2][0] == pytest.approx(1 / 5)


def test_ties_and_both_bad_count_half_a_win_each():
    # 3 wins, 1 loss, 1 tie, 1 both-bad: A scores 4 of 6 -> s_A - s_B = ln(4 / 2)
    table = battles("A", "B", "A", 3) + battles("B", "A", "A", 1) + battles("A", "B", "tie", 1) \
        + battles("B", "A", "both_bad", 1)
    board = leaderboard(table, penalty=0.0, rounds=0)
    gap = board.rating[0] - board.rating[1]
    assert board.names == ["A", "B"] and gap == pytest.approx(ELO_SCALE * math.log(2), abs=1e-6)
    assert board.win_rate[0][1] == pytest.approx(4 / 6)


def test_bootstrap_interval_holds_the_fit_and_narrows_with_more_votes():
    few = battles("A", "B", "A", 6) + battles("A", "B", "B", 3)
    many = battles("A", "B", "A", 60) + battles("A", "B", "B", 30)
    b_few, b_many = leaderboard(few, rounds=300, seed=1), leaderboard(many, rounds=300, seed=1)
    for b in (b_few, b_many):
        for r, lo, hi in zip(b.rating, b.lower, b.upper):
            assert lo <= r <= hi
    assert (b_many.upper[0] - b_many.lower[0]) < (b_few.upper[0] - b_few.lower[0]) / 2
    assert leaderboard(few, rounds=300, seed=1).lower == b_few.lower  # seeded


def test_a_model_that_never_lost_stays_finite():
    board = leaderboard(battles("A", "B", "A", 5), rounds=50)
    assert all(math.isfinite(x) for x in board.rating + board.lower + board.upper)
    assert board.names[0] == "A" and board.rating[0] > board.rating[1]


def test_style_control_moves_the_credit_to_length():
    # the long answer always wins, whichever model wrote it: with length as a covariate the models are even
    table = (battles("A", "B", "A", 8, {"A": 90, "B": 10}) + battles("A", "B", "B", 2, {"A": 10, "B": 90})
             + battles("A", "B", "A", 2, {"A": 90, "B": 10}))
    plain = leaderboard(table, rounds=0)
    styled = leaderboard(table, rounds=0, style=True)
    assert plain.rating[0] - plain.rating[1] > 100
    assert abs(styled.rating[0] - styled.rating[1]) < plain.rating[0] - plain.rating[1]
    assert styled.length_coef > 1 and plain.length_coef is None


def test_battles_file_errors_name_the_line(tmp_path):
    path = tmp_path / "votes_battles.jsonl"
    assert read_battles(path) == []
    path.write_text(json.dumps({"A": "x", "B": "y", "outcome": "A"}) + "\n" + '{"A": "x", "B": "y", "outcome": "?"}\n')
    with pytest.raises(DataError, match=f"{path}:2: not a battle record"):
        read_battles(path)
