"""Scoring answers: each prompt's per-instruction verdicts, and IFEval's four figures.

Prompt-level accuracy: the share of prompts whose every instruction is followed; instruction-level: the
share of instructions followed; each strict and loose (Zhou et al. 2023, section 2.2). A prompt without an
answer fails all its instructions; an instruction id this module does not know is counted as not followed
and listed under "unknown_ids", never dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from minidpo.verify.records import IFEvalRecord
from minidpo.verify.registry import INSTRUCTIONS, loose_variants, verdict


@dataclass(frozen=True)
class PromptResult:
    key: int | str
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]
    answered: bool = True

    @property
    def follow_all_strict(self) -> bool:
        return all(self.strict)

    @property
    def follow_all_loose(self) -> bool:
        return all(self.loose)

    def to_json(self) -> dict:
        return {"key": self.key, "instruction_id_list": self.instruction_id_list, "strict": self.strict,
                "loose": self.loose, "follow_all_strict": self.follow_all_strict,
                "follow_all_loose": self.follow_all_loose, "answered": self.answered}


def score_prompt(record: IFEvalRecord, response: str | None) -> PromptResult:
    """The strict and loose verdict on each of the record's instructions (None: the prompt has no answer)."""
    n = len(record.instruction_id_list)
    if response is None:
        return PromptResult(record.key, list(record.instruction_id_list), [False] * n, [False] * n, answered=False)
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(record.instruction_id_list, record.kwargs):
        if instruction_id not in INSTRUCTIONS:
            strict.append(False)
            loose.append(False)
            continue
        follows = verdict(instruction_id, kwargs)
        strict.append(follows(response))
        loose.append(strict[-1] or any(follows(variant) for variant in variants[1:]))
    return PromptResult(record.key, list(record.instruction_id_list), strict, loose)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def aggregate(results: Iterable[PromptResult]) -> dict:
    """IFEval's four figures (fractions in [0, 1]), the counts behind them, and accuracy per instruction id.

    {"prompts", "instructions", "unanswered", "prompt_strict", "prompt_loose", "instruction_strict",
     "instruction_loose", "per_kind": {id: {"n", "strict", "loose"}}, "unknown_ids": {id: count}}"""
    results = list(results)
    n_instructions = sum(len(r.strict) for r in results)
    per_kind_n, per_kind_strict, per_kind_loose = Counter(), Counter(), Counter()
    for result in results:
        for instruction_id, strict, loose in zip(result.instruction_id_list, result.strict, result.loose):
            per_kind_n[instruction_id] += 1
            per_kind_strict[instruction_id] += strict
            per_kind_loose[instruction_id] += loose
    return {
        "prompts": len(results),
        "instructions": n_instructions,
        "unanswered": sum(not r.answered for r in results),
        "prompt_strict": _share(sum(r.follow_all_strict for r in results), len(results)),
        "prompt_loose": _share(sum(r.follow_all_loose for r in results), len(results)),
        "instruction_strict": _share(sum(sum(r.strict) for r in results), n_instructions),
        "instruction_loose": _share(sum(sum(r.loose) for r in results), n_instructions),
        "per_kind": {kind: {"n": per_kind_n[kind], "strict": _share(per_kind_strict[kind], per_kind_n[kind]),
                            "loose": _share(per_kind_loose[kind], per_kind_n[kind])}
                     for kind in sorted(per_kind_n)},
        "unknown_ids": {kind: per_kind_n[kind] for kind in sorted(per_kind_n) if kind not in INSTRUCTIONS},
    }


def score(records: Iterable[IFEvalRecord], responses: Iterable[str | None]) -> tuple[list[PromptResult], dict]:
    """score_prompt for each record with its response (same order), and the aggregate."""
    results = [score_prompt(record, response) for record, response in zip(records, responses, strict=True)]
    return results, aggregate(results)
