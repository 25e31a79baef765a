"""Held-out preference data for evaluation, read by the trainer's own reader (`minidpo.data.iter_pairs`).

Every format the trainer accepts works here (prompt, messages, sharegpt, alpaca, trl; JSON or JSONL,
a file or a folder). Besides the pair, a record's optional `id`, `axis`, `lang` and `meta` are kept
(the demo data has them): the judge and the per-axis tables use them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from minidpo.data import iter_pairs
from minidpo.errors import DataError


@dataclass(frozen=True)
class HeldoutPair:
    prompt_messages: list[dict]
    chosen: str
    rejected: str
    source: str = ""  # "heldout.jsonl:17"
    id: object = None
    axis: str | None = None
    lang: str | None = None
    meta: dict = field(default_factory=dict)
    answer_messages: tuple | None = None  # (chosen, rejected) as assistant messages: tool calls, reasoning
    tools: list | None = None  # the record's tool schemas, for the chat template

    def answers(self) -> tuple[dict, dict]:
        """(chosen, rejected) as assistant messages: what is scored (a tool call's text alone is empty)."""
        if self.answer_messages is not None:
            return self.answer_messages
        return tuple({"role": "assistant", "content": t} for t in (self.chosen, self.rejected))

    @property
    def prompt(self) -> str:
        """The last user message: what a judge reads as "the question"."""
        return self.prompt_messages[-1]["content"]


def read_heldout(path, data_format: str = "auto") -> list[HeldoutPair]:
    """Every pair in `path`; the first bad record is a DataError naming file, line and field."""
    out = []
    for raw, _, item in iter_pairs(path, data_format):
        if isinstance(item, DataError):
            raise item
        extra = raw.value if isinstance(raw.value, dict) else {}
        meta = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}
        out.append(HeldoutPair(item.prompt_messages, item.chosen, item.rejected, item.source, extra.get("id"),
                               extra.get("axis"), extra.get("lang"), meta, item.answers(), item.tools))
    if not out:
        raise DataError(f"{path}: no records", "empty file")
    return out


def stratified(records: list, n: int | None) -> list:
    """Up to n records, taking turns over the (axis, lang) groups so that every group is represented."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r.axis, r.lang)].append(r)
    queues = [groups[k] for k in sorted(groups, key=lambda k: (str(k[0]), str(k[1])))]
    out, i = [], 0
    limit = len(records) if n is None else min(n, len(records))
    while len(out) < limit:
        for q in queues:
            if i < len(q) and len(out) < limit:
                out.append(q[i])
        i += 1
    return out
