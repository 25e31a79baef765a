"""The verifier judge (`--judge verify`): IFEval-format prompts, scored by the instructions they carry.

    records = ifeval_prompts(path)     # IFEval's input format -> the loop's records (HeldoutPair)
    VerifyJudge().score(messages, answer, record)   # share of the prompt's instructions followed, strict
    pairs, counts = verify_pairs(groups, margin=0.5, edit=True)

A record is a `minidpo.eval.HeldoutPair` with prompt_messages = the prompt as one user turn, id = the
key, axis = the first instruction's group ("change_case", "keywords", ...), lang = "en", and the
instructions in meta ({"instruction_id_list": [...], "kwargs": [...]}), where the judge reads them.

Pairs: the best sample against the worst, only where their scores differ by at least `margin`. With
`edit`, where no sample follows every instruction, the best sample is edited for the instructions it
misses that an edit can fix (minidpo.iterate.edits) and scored again; the edit is kept when the score
reaches 1.0 or rises by at least `margin`, and the pair is then the edited answer against the unedited
worst sample. counts say how many pairs came from edits and how many from sampling alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from minidpo.eval.heldout import HeldoutPair
from minidpo.iterate.edits import EDITS, edit_answer
from minidpo.iterate.pairs import Pair, PairCounts, ScoredPrompt, best_and_worst
from minidpo.verify import IFEvalRecord, parse_kwargs, read_ifeval, score_prompt

EPSILON = 1e-9  # scores are fractions such as 1/3: compare differences with the margin up to rounding


def ifeval_prompts(path) -> list[HeldoutPair]:
    """The prompts of an IFEval-format file as the loop's records; a bad record is a DataError
    naming file:line:field (minidpo.verify.read_ifeval)."""
    return [HeldoutPair([{"role": "user", "content": r.prompt}], "", "", source=str(path), id=r.key,
                        axis=r.instruction_id_list[0].split(":")[0] if r.instruction_id_list else "none", lang="en",
                        meta={"instruction_id_list": list(r.instruction_id_list), "kwargs": list(r.kwargs)})
            for r in read_ifeval(path)]


def ifeval_record(record) -> IFEvalRecord:
    """The IFEval record a loop record carries in its meta."""
    return IFEvalRecord(key=record.id, prompt=record.prompt, instruction_id_list=record.meta["instruction_id_list"],
                        kwargs=record.meta["kwargs"])


def prompt_score(record, answer: str) -> float | None:
    """Share of the prompt's instructions the answer follows, strictly; None for a prompt without any."""
    verdicts = score_prompt(ifeval_record(record), answer).strict
    return sum(verdicts) / len(verdicts) if verdicts else None


class VerifyJudge:
    """Scores an answer by IFEval's strict verifiers: the share of the prompt's instructions followed."""

    def score(self, prompt_messages, answer, record) -> float | None:
        return prompt_score(record, answer)


@dataclass
class VerifyCounts(PairCounts):
    below_margin: int = 0  # best and worst differ, but by less than the margin
    from_samples: int = 0  # pairs of two sampled answers
    from_edits: int = 0  # pairs whose chosen answer is the best sample edited
    edits_tried: int = 0  # prompts where no sample followed everything and an edit applied
    edited_kinds: Counter = field(default_factory=Counter)  # instruction ids of the kept edits

    @property
    def skipped(self) -> int:
        return super().skipped + self.below_margin

    def to_dict(self) -> dict:
        return {**super().to_dict(), "below_margin": self.below_margin, "from_samples": self.from_samples,
                "from_edits": self.from_edits, "edits_tried": self.edits_tried,
                "edits_kept": self.from_edits, "edited_kinds": dict(sorted(self.edited_kinds.items()))}


def try_edit(record, answer: str) -> tuple[str, float, list[str]] | None:
    """The answer edited for the prompt's instructions it does not follow, its new score and the ids
    edited; None when no edit applies. The caller keeps it only if `kept(...)` says so."""
    editable = [(i, parse_kwargs(i, kw)) for i, kw in zip(record.meta["instruction_id_list"], record.meta["kwargs"])
                if i in EDITS]
    edited, ids = edit_answer(answer, editable)
    if not ids:
        return None
    return edited, prompt_score(record, edited), ids


def kept(before: float, after: float, margin: float) -> bool:
    """An edit is kept when the prompt's score reaches 1.0 or rises by at least the margin."""
    return after >= 1.0 - EPSILON or after - before >= margin - EPSILON


def verify_pairs(groups: list[ScoredPrompt], margin: float, edit: bool) -> tuple[list[Pair], VerifyCounts]:
    """The round's pairs from verifier scores (see the module's docstring)."""
    pairs, counts = [], VerifyCounts(prompts=len(groups))
    for g in groups:
        ends = best_and_worst(g, counts)
        if ends is None:
            continue
        (best, b), (worst, w) = ends
        meta = {"id": g.record.id, "scores": g.scores, "rejected_score": worst}
        if edit and best < 1.0 - EPSILON:
            tried = try_edit(g.record, g.answers[b])
            counts.edits_tried += tried is not None
            if tried is not None and kept(best, tried[1], margin) and tried[0].strip() != g.answers[w].strip():
                counts.from_edits += 1
                counts.edited_kinds.update(tried[2])
                pairs.append(Pair(g.record.prompt_messages, tried[0], g.answers[w],
                                  {"source": "edit", **meta, "chosen_score": tried[1], "unedited_score": best,
                                   "edited": tried[2]}))
                continue
        if best == worst:
            counts.all_equal += 1
        elif best - worst < margin - EPSILON:
            counts.below_margin += 1
        elif g.answers[b].strip() == g.answers[w].strip():
            counts.same_text += 1
        else:
            counts.from_samples += 1
            pairs.append(Pair(g.record.prompt_messages, g.answers[b], g.answers[w],
                              {"source": "samples", **meta, "chosen_score": best}))
    counts.pairs = len(pairs)
    return pairs, counts
