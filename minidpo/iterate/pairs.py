"""Preference pairs for a round: from judged samples (best vs worst), or from the app's blind votes.

    pairs, counts = pairs_from_scores(groups)     # groups: one ScoredPrompt per prompt
    write_pairs(path, pairs)                      # seed-format JSONL the trainer reads
    pairs, counts = votes_pairs(votes, originals, fraction, rng)   # + minidpo.iterate.votes' unpaired examples
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from minidpo.fsutil import write_jsonl_atomic


@dataclass
class ScoredPrompt:
    """One prompt's sampled answers and their scores (None: the judge could not say)."""

    record: object  # minidpo.eval.HeldoutPair: prompt_messages, id, axis, lang, meta
    answers: list[str]
    scores: list[float | None]


@dataclass(frozen=True)
class Pair:
    prompt_messages: list[dict]
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)


@dataclass
class PairCounts:
    prompts: int = 0
    pairs: int = 0
    all_equal: int = 0  # every scored answer has the same score (a tie between best and worst)
    unscored: int = 0  # fewer than two answers with a score
    same_text: int = 0  # best and worst answer are the same text (a judge that is not a function of it)
    empty_answers: int = 0  # answers left out: nothing but whitespace (the trainer refuses empty answers)

    @property
    def skipped(self) -> int:
        return self.all_equal + self.unscored + self.same_text

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "pairs": self.pairs, "skipped": self.skipped, "all_equal": self.all_equal,
                "unscored": self.unscored, "same_text": self.same_text,
                "empty_answers": self.empty_answers}


def best_and_worst(g: ScoredPrompt, counts: PairCounts) -> tuple[tuple, tuple] | None:
    """(score, index) of the prompt's best and worst answer, the first of equals; None (counted as
    unscored) with fewer than two scored answers. Empty answers take no part and are counted."""
    empty = [k for k, a in enumerate(g.answers) if not a.strip()]
    counts.empty_answers += len(empty)
    scored = [(s, k) for k, s in enumerate(g.scores) if s is not None and k not in empty]
    if len(scored) < 2:
        counts.unscored += 1
        return None
    best = max(scored, key=lambda t: (t[0], -t[1]))  # highest score, first such answer
    worst = min(scored, key=lambda t: (t[0], t[1]))  # lowest score, first such answer
    return best, worst


def pairs_from_scores(groups: list[ScoredPrompt]) -> tuple[list[Pair], PairCounts]:
    """Per prompt: the highest-scored answer is chosen, the lowest rejected (the first of equals);
    prompts whose answers all score the same, or with fewer than two scores, give no pair. Empty
    answers take no part (a pair with one cannot be trained on)."""
    pairs, counts = [], PairCounts(prompts=len(groups))
    for g in groups:
        ends = best_and_worst(g, counts)
        if ends is None:
            continue
        best, worst = ends
        if best[0] == worst[0]:
            counts.all_equal += 1
            continue
        chosen, rejected = g.answers[best[1]], g.answers[worst[1]]
        if chosen.strip() == rejected.strip():
            counts.same_text += 1
            continue
        meta = {"source": "samples", "id": getattr(g.record, "id", None), "chosen_score": best[0],
                "rejected_score": worst[0], "scores": g.scores}
        pairs.append(Pair(g.record.prompt_messages, chosen, rejected, meta))
    counts.pairs = len(pairs)
    return pairs, counts


def votes_pairs(votes: list, originals: list, fraction: float, rng: random.Random,
                other_votes: int = 0) -> tuple[list[Pair], dict]:
    """Every vote as a pair, mixed with pairs drawn from the original data so that votes are `fraction`
    of the round's records (fraction 1: votes only). votes / originals: `HeldoutPair`s; other_votes:
    the round's vote records that are not pairs (unpaired examples), counted in the fraction."""
    n_votes = len(votes) + other_votes
    n_orig = min(len(originals), round(n_votes * (1 - fraction) / fraction)) if n_votes else 0
    drawn = rng.sample(range(len(originals)), n_orig)
    pairs = [Pair(v.prompt_messages, v.chosen, v.rejected, {"source": "votes", **_vote_meta(v)}) for v in votes]
    pairs += [Pair(originals[i].prompt_messages, originals[i].chosen, originals[i].rejected,
                   {"source": "data", "id": originals[i].id}) for i in sorted(drawn)]
    return pairs, {"votes": len(votes), "original": n_orig, "pairs": len(pairs)}


def _vote_meta(v) -> dict:
    return {k: v.meta[k] for k in ("winner", "loser", "timestamp") if k in v.meta}


def prompt_form(msgs: list[dict]) -> tuple[str | list[dict], str | None]:
    """(prompt text, system text or None) for a prompt of one user turn after at most one system turn,
    else (the messages, None): TRL's conversational form, for earlier turns the plain form cannot hold."""
    system = [m["content"] for m in msgs if m["role"] == "system"]
    rest = [m for m in msgs if m["role"] != "system"]
    if len(rest) == 1 and len(system) <= 1 and (not system or msgs[0]["role"] == "system"):
        return rest[0]["content"], (system[0] if system else None)
    return msgs, None


def pair_record(p: Pair) -> dict:
    """The plain format ({"prompt", "chosen", "rejected", "system"}), or TRL's conversational one
    for a prompt with earlier turns, which the plain format cannot hold."""
    prompt, system = prompt_form(p.prompt_messages)
    if isinstance(prompt, str):
        rec = {"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected}
    else:
        rec = {"prompt": prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
               "rejected": [{"role": "assistant", "content": p.rejected}]}
    if system is not None:
        rec["system"] = system
    rec["meta"] = p.meta
    return rec


def write_pairs(path, pairs: list[Pair]) -> None:
    write_jsonl_atomic(path, (pair_record(p) for p in pairs))
