"""Where a blind vote is saved: one preference pair per line, in the format the trainer reads.

    {"prompt", "chosen", "rejected", "system" (only if given),
     "meta": {"winner", "loser", "vote", "shown_as", "order_seed", "timestamp", "settings", "models",
              "beta", "implicit_rewards"}}

`minidpo.data.load_preference_data(path, ...)` loads the file unchanged (it ignores `meta`).
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from minidpo.errors import first_line

DEFAULT_VOTES = "runs/votes.jsonl"


class VoteRefused(ValueError):
    """A vote that cannot become a training pair (or cannot be written); the message says why."""


class VoteWriter:
    def __init__(self, path=DEFAULT_VOTES):
        self.path = Path(path)
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
        record = {"prompt": comparison["prompt"], "chosen": chosen, "rejected": rejected}
        if comparison["system"]:
            record["system"] = comparison["system"]
        rewards = comparison.get("rewards")
        record["meta"] = {
            "winner": shown[choice].lower(),
            "loser": shown[loser].lower(),
            "vote": choice,
            "shown_as": {"A": shown["A"].lower(), "B": shown["B"].lower()},
            "order_seed": comparison["order_seed"],
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": comparison["settings"],
            "models": models,
            "beta": beta,
            "implicit_rewards": {k.lower(): v for k, v in rewards.items()} if rewards else None,
        }
        return record

    def append(self, record: dict) -> None:
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise VoteRefused(f"Could not write the vote to {self.path}: {first_line(exc)}") from exc
