"""The app's vote files as a round's data (`--judge votes`), read as app/votes.py writes them:

    votes file     (--votes)           preference pairs: an A or B vote                   -> the round's pairs
    unpaired file  (name + _unpaired)  KTO's format, a thumbs up / down on one answer, or
                                       "both bad" = two examples with label false         -> unpaired records
    battles file   (name + _battles)   every arena vote, ties too: {"outcome": A|B|tie|both_bad}
                                                                                          -> counted only

A tie has no preference, so no training data; a "both bad" battle's two answers are already in the
unpaired file (counted there once, and as a battle). The unpaired and battles files are optional;
every malformed line is a DataError naming file:line:field.

    votes = read_votes(cfg)                         # VoteFiles: pairs, unpaired, battle outcomes
    records = [unpaired_record(u) for u in votes.unpaired]
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from minidpo.data import iter_pairs
from minidpo.data.files import read_records, type_name
from minidpo.errors import DataError
from minidpo.eval.heldout import HeldoutPair
from minidpo.iterate.pairs import prompt_form

OUTCOMES = ("A", "B", "tie", "both_bad")  # app/votes.py's
UNPAIRED_VOTES = ("both_bad", "thumbs_up", "thumbs_down")  # the unpaired file's meta.vote


@dataclass(frozen=True)
class Unpaired:
    """One answer with a label: desirable (thumbs up) or not (thumbs down, both bad)."""

    prompt_messages: list[dict]
    completion: str
    label: bool
    meta: dict = field(default_factory=dict)


@dataclass
class VoteFiles:
    pairs: list[HeldoutPair]
    unpaired: list[Unpaired]
    outcomes: Counter  # battles file: outcome -> votes

    def counts(self) -> dict:
        """What the round's pairs.json says of the votes besides the pairs."""
        by_vote = Counter(u.meta.get("vote") if u.meta.get("vote") in UNPAIRED_VOTES else "other" for u in self.unpaired)
        return {"unpaired": len(self.unpaired), "unpaired_from": dict(sorted(by_vote.items())),
                "desirable": sum(u.label for u in self.unpaired), "undesirable": sum(not u.label for u in self.unpaired),
                "battles": sum(self.outcomes.values()), "ties": self.outcomes["tie"],
                "both_bad": self.outcomes["both_bad"]}


def _has_records(path: str) -> bool:
    """A file that exists and holds something (the app creates each file at its first vote of that kind)."""
    return os.path.isfile(path) and bool(Path(path).read_text(encoding="utf-8", errors="replace").strip())


def read_vote_pairs(path: str) -> list[HeldoutPair]:
    """The votes file's pairs; an unpaired example there is an error (it belongs in the unpaired file)."""
    out = []
    for raw, fmt, item in iter_pairs(path):
        if isinstance(item, DataError):
            raise item
        if item.label is not None:
            raise DataError(f"{item.source}: field \"label\": an unpaired example in the votes file, which holds pairs "
                            "(prompt/chosen/rejected); thumbs and both-bad votes belong in the unpaired file beside it",
                            "unpaired in votes")
        meta = raw.value.get("meta") if isinstance(raw.value, dict) else None
        out.append(HeldoutPair(item.prompt_messages, item.chosen, item.rejected, item.source,
                               meta=meta if isinstance(meta, dict) else {}))
    return out


def read_unpaired_votes(path: str) -> list[Unpaired]:
    """The unpaired file's examples, in KTO's format (`minidpo.data`'s "unpaired" parser)."""
    out = []
    for raw, _, item in iter_pairs(path, "unpaired"):
        if isinstance(item, DataError):
            raise item
        meta = raw.value.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"{raw.source}: field \"meta\": expected an object, got {type_name(meta)}", "wrong type")
        out.append(Unpaired(item.prompt_messages, item.chosen, bool(item.label), meta or {}))
    return out


def read_battle_outcomes(path: str) -> Counter:
    """outcome -> number of lines of the battles file."""
    outcomes: Counter = Counter()
    for rec in read_records(path):
        if isinstance(rec.value, DataError):
            raise rec.value
        if not isinstance(rec.value, dict):
            raise DataError(f"{rec.source}: expected a JSON object, got {type_name(rec.value)}", "wrong type")
        outcome = rec.value.get("outcome")
        if outcome not in OUTCOMES:
            raise DataError(f"{rec.source}: field \"outcome\": expected one of {', '.join(OUTCOMES)}, got {outcome!r}",
                            "bad outcome")
        outcomes[outcome] += 1
    return outcomes


def read_votes(cfg) -> VoteFiles:
    """The three files of an IterateConfig's --votes (the unpaired and battles files when they hold votes)."""
    unpaired, battles = cfg.votes_beside("unpaired"), cfg.votes_beside("battles")
    return VoteFiles(read_vote_pairs(cfg.votes) if _has_records(cfg.votes) else [],
                     read_unpaired_votes(unpaired) if _has_records(unpaired) else [],
                     read_battle_outcomes(battles) if _has_records(battles) else Counter())


def unpaired_record(u: Unpaired) -> dict:
    """KTO's format as the app writes it: plain {"prompt", "completion", "label", "system"}, or a
    conversational prompt (earlier turns) with the completion as one assistant message."""
    prompt, system = prompt_form(u.prompt_messages)
    if isinstance(prompt, str):
        rec = {"prompt": prompt, "completion": u.completion, "label": u.label}
    else:
        rec = {"prompt": prompt, "completion": [{"role": "assistant", "content": u.completion}], "label": u.label}
    if system is not None:
        rec["system"] = system
    rec["meta"] = {"source": "votes_unpaired", **{k: u.meta[k] for k in ("model", "vote", "timestamp") if k in u.meta}}
    return rec


def describe_votes(c: dict) -> str:
    """One line on a votes round's records: what became pairs, unpaired examples, and what did not."""
    text = f"{c['votes']} A/B votes and {c['original']} pairs from --data"
    if c.get("unpaired"):
        by = c.get("unpaired_from", {})
        parts = [f"{by['both_bad']} from both-bad votes"] if by.get("both_bad") else []
        parts += [f"{by[k]} {k.replace('_', ' ')}" for k in ("thumbs_up", "thumbs_down", "other") if by.get(k)]
        text += (f"; {c['unpaired']} unpaired examples ({', '.join(parts)}; {c['desirable']} desirable, "
                 f"{c['undesirable']} undesirable), trained with kto")
    if c.get("battles"):
        text += (f"; battles file: {c['ties']} ties (no pair: a tie prefers neither answer), {c['both_bad']} both "
                 "bad (their answers are the unpaired file's both-bad examples)")
    return text
