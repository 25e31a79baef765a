"""Listwise records for a round (`listwise: true`): all of a prompt's sampled answers with their scores,
one record {"prompt", "responses": [...], "scores": [...]} (minidpo.data.listwise), trained with
loss_type listwise_pairs or plackett_luce instead of one best-vs-worst pair.

    lists, counts = lists_from_scores(groups)                 # rule, reward_model, your own judge
    lists, counts = verify_lists(groups, margin, edit)        # judge=verify
    write_lists(path, lists)

A list holds the answers that are not empty and have a score; a prompt with fewer than two, or whose
answers all score the same or all are the same text, gives none (counted, as for pairs). With the
verifier's edit lever, the best answer edited until the verifier passes it joins the list as one more
answer with its own (verified) score: the list then ranks the fix above every sample, and the pairs
mode's lesson (the edited answer against the worst) is one of the list's pairs. counts say "lists".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minidpo.fsutil import write_jsonl_atomic
from minidpo.iterate.pairs import PairCounts, ScoredPrompt, prompt_form
from minidpo.iterate.verifier import EPSILON, VerifyCounts, kept, try_edit


@dataclass(frozen=True)
class ScoredList:
    prompt_messages: list[dict]
    responses: list[str]
    scores: list[float]
    meta: dict = field(default_factory=dict)


def as_lists(counts: dict) -> dict:
    """A PairCounts dict with its number of records called what they are: "lists"."""
    return {("lists" if k == "pairs" else k): v for k, v in counts.items()}


def scored_answers(g: ScoredPrompt, counts: PairCounts) -> list[tuple[str, float]] | None:
    """(answer, score) of the prompt's non-empty scored answers in sampling order; None (counted as
    unscored) with fewer than two. Empty answers are counted."""
    counts.empty_answers += sum(not a.strip() for a in g.answers)
    kept_answers = [(a, s) for a, s in zip(g.answers, g.scores) if s is not None and a.strip()]
    if len(kept_answers) < 2:
        counts.unscored += 1
        return None
    return kept_answers


def lists_from_scores(groups: list[ScoredPrompt]) -> tuple[list[ScoredList], dict]:
    """One list per prompt whose answers' scores differ (see the module's docstring)."""
    lists, counts = [], PairCounts(prompts=len(groups))
    for g in groups:
        answers = scored_answers(g, counts)
        if answers is None:
            continue
        if len({s for _, s in answers}) == 1:
            counts.all_equal += 1
        elif len({a.strip() for a, _ in answers}) == 1:
            counts.same_text += 1
        else:
            lists.append(ScoredList(g.record.prompt_messages, [a for a, _ in answers], [s for _, s in answers],
                                    {"source": "samples", "id": getattr(g.record, "id", None)}))
    counts.pairs = len(lists)
    return lists, as_lists(counts.to_dict())


def verify_lists(groups: list[ScoredPrompt], margin: float, edit: bool) -> tuple[list[ScoredList], dict]:
    """judge=verify's lists: the best-worst spread must reach the margin, unless the list gained an
    edited answer (kept by the pairs mode's rule: it reaches 1.0 or rises by the margin)."""
    lists, counts = [], VerifyCounts(prompts=len(groups))
    for g in groups:
        answers = scored_answers(g, counts)
        if answers is None:
            continue
        meta = {"id": g.record.id}
        best = max(s for _, s in answers)
        if edit and best < 1.0 - EPSILON:
            chosen = next(a for a, s in answers if s == best)  # the first best answer, as in the pairs mode
            tried = try_edit(g.record, chosen)
            counts.edits_tried += tried is not None
            if tried is not None and kept(best, tried[1], margin) and tried[0].strip() not in {a.strip() for a, _ in answers}:
                counts.from_edits += 1
                counts.edited_kinds.update(tried[2])
                lists.append(ScoredList(g.record.prompt_messages, [a for a, _ in answers] + [tried[0]],
                                        [s for _, s in answers] + [tried[1]],
                                        {"source": "edit", **meta, "edited": tried[2], "unedited_score": best}))
                continue
        spread = best - min(s for _, s in answers)
        if spread == 0:
            counts.all_equal += 1
        elif spread < margin - EPSILON:
            counts.below_margin += 1
        elif len({a.strip() for a, _ in answers}) == 1:
            counts.same_text += 1
        else:
            counts.from_samples += 1
            lists.append(ScoredList(g.record.prompt_messages, [a for a, _ in answers], [s for _, s in answers],
                                    {"source": "samples", **meta}))
    counts.pairs = len(lists)
    return lists, as_lists(counts.to_dict())


def list_record(x: ScoredList) -> dict:
    """The listwise format ({"prompt", "responses", "scores", "system"}), with the prompt as messages
    when it has earlier turns, which the plain form cannot hold."""
    prompt, system = prompt_form(x.prompt_messages)
    rec = {"prompt": prompt} if system is None else {"prompt": prompt, "system": system}
    return {**rec, "responses": list(x.responses), "scores": list(x.scores), "meta": x.meta}


def write_lists(path, lists: list[ScoredList]) -> None:
    write_jsonl_atomic(path, (list_record(x) for x in lists))
