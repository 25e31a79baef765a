"""The arena's leaderboard: Bradley-Terry strengths with ties, bootstrap 95% intervals, the win-rate matrix.

Pure numpy (scipy is not a dependency). A battle of models i and j with outcome y (1: i won, 0: j won,
1/2: a tie or "both bad", as LMSYS's arena counts them) has the likelihood

    P(i beats j) = sigmoid(s_i - s_j + gamma * z),   log L = sum_battles y log P + (1 - y) log (1 - P)

where s are the strengths and, with `style=True`, z = (tokens_i - tokens_j) / (tokens_i + tokens_j) is the
answers' length difference as a covariate (LMSYS's style control): gamma > 0 says longer answers win
regardless of the model, and the strengths are then what is left once length is accounted for. The fit is
Newton's method on this concave log-likelihood with a weak Gaussian prior `penalty * |s|^2 / 2`, which
keeps a model that never lost finite. Ratings are on the Elo scale: 1000 + 400 * log10(e) * s, mean 1000.
Intervals: the battles resampled with replacement `rounds` times, each refitted, the 2.5th and 97.5th
percentiles of each rating.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minidpo.errors import DataError

ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0
SCORE = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}


def read_battles(path) -> list[dict]:
    """The battles file's lines; a broken line is a DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        return []
    battles = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            b = json.loads(line)
            if b["outcome"] not in SCORE or not isinstance(b["A"], str) or not isinstance(b["B"], str):
                raise ValueError(f"outcome {b['outcome']!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a battle record ({exc})") from None
        battles.append(b)
    return battles


def design(battles: list[dict], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, z): one row per battle, X[r] = e_A - e_B over `names`, y the outcome, z the length covariate."""
    index = {n: i for i, n in enumerate(names)}
    X = np.zeros((len(battles), len(names)))
    y, z = np.zeros(len(battles)), np.zeros(len(battles))
    for r, b in enumerate(battles):
        X[r, index[b["A"]]] += 1.0
        X[r, index[b["B"]]] -= 1.0
        y[r] = SCORE[b["outcome"]]
        ta, tb = (b.get("tokens") or {}).get("A", 0), (b.get("tokens") or {}).get("B", 0)
        z[r] = (ta - tb) / (ta + tb) if ta + tb > 0 else 0.0
    return X, y, z


def fit(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *, n_models: int | None = None,
        penalty: float = 0.01, iterations: int = 100, tol: float = 1e-10) -> np.ndarray:
    """The maximum of sum_r w_r [y_r log sigmoid(X_r theta) + (1 - y_r) log sigmoid(-X_r theta)]
    - penalty |theta[:n_models]|^2 / 2, by Newton's method. The first `n_models` columns (default all) are
    the models' strengths, returned centred on mean 0; later columns (the length covariate) are free."""
    w = np.ones(len(y)) if weights is None else weights
    n_models = X.shape[1] if n_models is None else n_models
    prior = np.zeros(X.shape[1])
    prior[:n_models] = penalty
    theta = np.zeros(X.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (w * (y - p)) - prior * theta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(prior)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]  # singular without a prior: strengths are up to a shift
        step *= min(1.0, 5.0 / max(np.abs(step).max(), 1e-12))  # no overshoot far into a flat likelihood
        theta += step
        theta[:n_models] -= theta[:n_models].mean()
        if np.abs(step).max() < tol:
            break
    return theta


def ratings(strengths: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * (strengths - strengths.mean())


@dataclass
class Board:
    names: list[str]  # best first
    rating: list[float]
    lower: list[float]  # bootstrap 2.5th percentile
    upper: list[float]  # bootstrap 97.5th percentile
    votes: list[int]  # battles each model was in
    win_rate: list[list[float | None]]  # [i][j]: share of i's battles against j that i won (ties: half)
    battles: int
    length_coef: float | None  # gamma (style control), else None


def win_rates(battles: list[dict], names: list[str]) -> list[list[float | None]]:
    index = {n: i for i, n in enumerate(names)}
    won, played = np.zeros((len(names),) * 2), np.zeros((len(names),) * 2)
    for b in battles:
        a, c, s = index[b["A"]], index[b["B"]], SCORE[b["outcome"]]
        won[a, c] += s
        won[c, a] += 1 - s
        played[a, c] += 1
        played[c, a] += 1
    return [[float(won[i, j] / played[i, j]) if played[i, j] else None for j in range(len(names))]
            for i in range(len(names))]


def leaderboard(battles: list[dict], names: list[str] | None = None, *, rounds: int = 200, seed: int = 0,
                penalty: float = 0.01, style: bool = False) -> Board:
    """The board of `battles` over `names` (default: every model in a battle), best first."""
    names = list(names) if names else sorted({b[k] for b in battles for k in ("A", "B")})
    names += sorted({b[k] for b in battles for k in ("A", "B")} - set(names))
    X, y, z = design(battles, names)
    M = np.column_stack([X, z]) if style else X
    theta = fit(M, y, n_models=len(names), penalty=penalty)
    rating = ratings(theta[:len(names)])
    if battles and rounds:
        rng = np.random.default_rng(seed)
        draws = np.array([ratings(fit(M, y, rng.multinomial(len(y), np.full(len(y), 1 / len(y))),
                                      n_models=len(names), penalty=penalty)[:len(names)]) for _ in range(rounds)])
        lower, upper = np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)
    else:
        lower = upper = rating
    votes = np.abs(X).sum(axis=0).astype(int)
    order = np.argsort(-rating, kind="stable")
    rates = win_rates(battles, names)
    return Board(names=[names[i] for i in order], rating=[float(rating[i]) for i in order],
                 lower=[float(lower[i]) for i in order], upper=[float(upper[i]) for i in order],
                 votes=[int(votes[i]) for i in order], win_rate=[[rates[i][j] for j in order] for i in order],
                 battles=len(battles), length_coef=float(theta[-1]) if style else None)
