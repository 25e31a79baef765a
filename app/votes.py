"""Where votes are saved: every vote that can train becomes a line of the votes file, in the formats the
trainer reads, and every arena vote (ties too) a line of the battles file the leaderboard reads.

votes file (`--votes`, default runs/votes.jsonl), one preference pair per line (A or B is better):
    {"prompt", "chosen", "rejected", "system" (only if given), "meta": {"winner", "loser", "vote", "shown_as",
     "order_seed", "timestamp", "settings", "models", "beta", "implicit_rewards", "battle"}}
unpaired file (the votes file's name + `_unpaired`, e.g. runs/votes_unpaired.jsonl): both bad, or a thumbs
up / down on one answer, one example per answer (KTO's format; a file of its own, so the votes file stays
one the trainer reads as it is):
    {"prompt", "completion", "label": true | false, "system" (only if given), "meta": {"model", "vote", ...}}
A tie writes no training data (no preference to learn).
A later turn of a conversation has the conversation as "prompt" (a list of messages) and the answers as
one assistant message each (TRL's conversational form), since the plain form cannot hold earlier turns.

battles file (the votes file's name + `_battles`, e.g. runs/votes_battles.jsonl):
    {"battle", "turn", "A", "B", "outcome": "A" | "B" | "tie" | "both_bad", "tokens": {"A", "B"},
     "judge", "timestamp"}

`minidpo.data.load_preference_data(path, ...)` loads a votes file of pairs unchanged (it ignores `meta`).
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from minidpo.errors import first_line

DEFAULT_VOTES = "runs/votes.jsonl"
OUTCOMES = ("A", "B", "tie", "both_bad")


class VoteRefused(ValueError):
    """A vote that cannot become training data (or cannot be written); the message says why."""


def beside(votes_path, kind: str) -> Path:
    """The file of `kind` ("battles", "unpaired") next to the votes file."""
    p = Path(votes_path)
    return p.with_name(f"{p.stem}_{kind}{p.suffix or '.jsonl'}")


def battles_path(votes_path) -> Path:
    return beside(votes_path, "battles")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prompt_fields(comparison: dict, answers: dict) -> dict:
    """prompt / answers in the plain form, or the conversational one when earlier turns exist."""
    history = comparison.get("history") or []
    if not history:
        out = {"prompt": comparison["prompt"], **answers}
        if comparison["system"]:
            out["system"] = comparison["system"]
        return out
    system = [{"role": "system", "content": comparison["system"]}] if comparison["system"] else []
    prompt = [*system, *history, {"role": "user", "content": comparison["prompt"]}]
    return {"prompt": prompt, **{k: [{"role": "assistant", "content": v}] for k, v in answers.items()}}


class VoteWriter:
    def __init__(self, path=DEFAULT_VOTES):
        self.path = Path(path)
        self.battles_path = battles_path(path)
        self.unpaired_path = beside(path, "unpaired")
        self._lock = threading.Lock()  # two browser tabs may vote at once

    def record(self, comparison: dict, choice: str, *, models: dict, beta: float) -> dict:
        """The JSONL record for voting `choice` ("A" or "B") on a finished blind comparison."""
        if choice not in ("A", "B"):
            raise ValueError(f"unknown vote {choice!r}")
        shown = comparison["models"]
        loser = "B" if choice == "A" else "A"
        chosen, rejected = comparison["answers"][choice], comparison["answers"][loser]
        if not chosen.strip() or not rejected.strip():
            raise VoteRefused("One answer is empty, so this pair cannot become training data; skip it.")
        if chosen.strip() == rejected.strip():
            raise VoteRefused("The two answers are identical, so there is nothing to learn from this pair; skip it.")
        record = _prompt_fields(comparison, {"chosen": chosen, "rejected": rejected})
        rewards = comparison.get("rewards")
        record["meta"] = {
            "winner": shown[choice].lower(),
            "loser": shown[loser].lower(),
            "vote": choice,
            "shown_as": {"A": shown["A"].lower(), "B": shown["B"].lower()},
            "order_seed": comparison["order_seed"],
            "timestamp": _now(),
            "settings": comparison["settings"],
            "models": models,
            "beta": beta,
            "implicit_rewards": {k.lower(): v for k, v in rewards.items()} if rewards else None,
            **({"battle": comparison["battle"], "turn": comparison.get("turn", 0)} if "battle" in comparison else {}),
        }
        return record

    def unpaired(self, comparison: dict, side: str, label: bool, *, vote: str, models: dict) -> dict:
        """An unpaired example {"prompt", "completion", "label"} of the answer shown as `side`."""
        completion = comparison["answers"][side]
        if not completion.strip():
            raise VoteRefused("The answer is empty, so it cannot become training data.")
        record = _prompt_fields(comparison, {"completion": completion})
        record["label"] = bool(label)
        record["meta"] = {"model": comparison["models"][side], "vote": vote, "timestamp": _now(),
                          "settings": comparison["settings"], "models": models,
                          **({"battle": comparison["battle"], "turn": comparison.get("turn", 0)}
                             if "battle" in comparison else {})}
        return record

    def battle(self, comparison: dict, outcome: str, *, judge: str = "person") -> dict:
        """The battles-file line of an arena vote."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
        return {"battle": comparison.get("battle"), "turn": comparison.get("turn", 0), "A": comparison["models"]["A"],
                "B": comparison["models"]["B"], "outcome": outcome, "tokens": comparison.get("tokens", {}),
                "judge": judge, "timestamp": _now()}

    def append(self, *records: dict, battle: dict | None = None) -> None:
        """Append training records to the votes file and the battle line to the battles file."""
        try:
            with self._lock:
                pairs = [r for r in records if "label" not in r]
                unpaired = [r for r in records if "label" in r]
                for path, lines in ((self.path, pairs), (self.unpaired_path, unpaired),
                                    (self.battles_path, [battle] if battle else [])):
                    if lines:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with open(path, "a", encoding="utf-8") as f:
                            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
        except OSError as exc:
            raise VoteRefused(f"Could not write the vote to {self.path}: {first_line(exc)}") from exc
