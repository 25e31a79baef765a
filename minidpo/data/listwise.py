"""Listwise records: one prompt, K >= 2 ranked answers (format "listwise").

    {"prompt": str | [messages], "responses": [str | assistant message, ...], "scores": [number, ...]}
    {"prompt": ..., "responses": [...], "ranking": [index of the best answer, ..., index of the worst]}

K may differ per record; scores may tie (a ranking cannot: it is a permutation of 0..K-1, turned into
scores K-1, ..., 0). Every problem is a DataError naming file:line and the field.

UltraFeedback's raw form (openbmb/UltraFeedback; formats "ultrafeedback_ratings" / "ultrafeedback_overall")
is read as such a list: `parse_ultrafeedback`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from minidpo.errors import DataError, ModelError

from .files import type_name
from .messages import Record


@dataclass(frozen=True)
class TokenizedList:
    """One prompt's ids and its K answers' ids (each ending as a TokenizedPair's answer does), with a
    score per answer (higher is better): a row of `minidpo.data.collate.collate_listwise`."""

    prompt_ids: list[int]
    answer_ids: list[list[int]]
    scores: list[float]

    @property
    def max_length(self) -> int:
        """The packed row's length, prompt + every answer: what batches are grouped by."""
        return len(self.prompt_ids) + sum(map(len, self.answer_ids))


def are_lists(rows) -> bool:
    """Listwise rows (TokenizedList), not pairs: a run's data holds one kind (minidpo.train.check_data_kind)."""
    return len(rows) > 0 and isinstance(rows[0], TokenizedList)


def row_unit(rows) -> str:
    """What the rows are called in log lines: "lists" or "pairs"."""
    return "lists" if are_lists(rows) else "pairs"


def count_lists(answer_counts: list[int]) -> str:
    """K per list -> "24 lists of 3-4 answers (84 answers)" ("8 lists of 4 answers (32 answers)")."""
    if not answer_counts:
        return "0 lists"
    low, high = min(answer_counts), max(answer_counts)
    k = f"{low}" if low == high else f"{low}-{high}"
    return f"{len(answer_counts)} lists of {k} answers ({sum(answer_counts)} answers)"


def is_listwise(record: object) -> bool:
    """A record with K ranked answers, not a pair."""
    return isinstance(record, dict) and "responses" in record and ("scores" in record or "ranking" in record)


def parse_listwise(r: Record) -> tuple[list[dict], list[dict], list[float]]:
    """(prompt messages, answers as assistant messages, one score per answer; higher is better)."""
    if isinstance(r.d.get("prompt"), list):
        prompt = r.messages("prompt")
    else:
        system = r.get("system", str, required=False, allow_empty=True)
        prompt = ([{"role": "system", "content": system}] if system and system.strip() else []) + \
            [{"role": "user", "content": r.get("prompt", str)}]
    r.check_prompt(prompt, "prompt")
    given = r.get("responses", list)
    if len(given) < 2:
        r.fail("responses", f"expected at least 2 answers to rank, got {len(given)}", "too few answers")
    answers = [_answer(r, a, f"responses[{i}]") for i, a in enumerate(given)]
    scores = _scores(r, len(answers)) if "scores" in r.d else _ranking(r, len(answers))
    return prompt, answers, scores


# UltraFeedback's four aspects, each annotated {"Rating": "1".."5" or "N/A", "Rationale": ..., ...}
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def is_ultrafeedback(record: object) -> bool:
    """UltraFeedback's raw form: an instruction with its completions ({"response", "annotations", ...})."""
    if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
        return False
    return "instruction" in record or any(isinstance(c, dict) and "response" in c for c in record["completions"])


def parse_ultrafeedback(r: Record, rating: str = "mean") -> tuple[list[dict], list[dict], list[float]]:
    """{"instruction", "completions": [{"response", "annotations", "overall_score", ...}]} -> (prompt
    messages, answers, scores), as `parse_listwise`. rating "mean": each completion's score is the mean of
    its aspect ratings, "N/A" left out (what the mean-rating binarizations of UltraFeedback use); "overall":
    its overall_score. A completion without a usable rating (every aspect "N/A", no overall_score) is left
    out; fewer than 2 rated completions is an error."""
    prompt = r.check_prompt([{"role": "user", "content": r.get("instruction", str)}], "instruction")
    completions = r.get("completions", list, allow_empty=True)
    answers, scores = [], []
    for i, c in enumerate(completions):
        field = f"completions[{i}]"
        if not isinstance(c, dict):
            r.fail(field, f"expected a completion object, got {type_name(c)}", "wrong type")
        score = _aspect_mean(r, c, field) if rating == "mean" else _overall_score(r, c, field)
        if score is not None:
            answers.append({"role": "assistant", "content": r.string(c.get("response"), f"{field}.response")})
            scores.append(score)
    if len(answers) < 2:
        what = f"a rating in annotations ({', '.join(ASPECTS)})" if rating == "mean" else "an overall_score"
        r.fail("completions", f"{len(answers)} of {len(completions)} completions have {what}: at least 2 are "
               "needed to rank", "too few answers")
    return prompt, answers, scores


def _aspect_mean(r: Record, c: dict, field: str) -> float | None:
    notes = c.get("annotations")
    if not isinstance(notes, dict):
        r.fail(f"{field}.annotations", f"expected an object of aspect ratings ({', '.join(ASPECTS)}), got "
               f"{type_name(notes)}", "missing field" if notes is None else "wrong type")
    ratings = []
    for aspect in (a for a in ASPECTS if a in notes):
        where = f"{field}.annotations.{aspect}"
        if not isinstance(notes[aspect], dict) or "Rating" not in notes[aspect]:
            r.fail(where, f'expected {{"Rating": "1".."5" or "N/A", ...}}, got {type_name(notes[aspect])}',
                   "wrong type")
        value = notes[aspect]["Rating"]
        if value == "N/A":
            continue
        number = _number(value.strip() if isinstance(value, str) else value)
        if number is None or not 1 <= number <= 5:
            r.fail(f"{where}.Rating", f'expected "1".."5" or "N/A", got {value!r}', "bad rating")
        ratings.append(number)
    return sum(ratings) / len(ratings) if ratings else None


def _overall_score(r: Record, c: dict, field: str) -> float | None:
    value = c.get("overall_score")
    if value is None:
        return None
    number = _number(value) if not isinstance(value, str) else None
    if number is None:
        r.fail(f"{field}.overall_score", f"expected a finite number, got {value!r}", "wrong type")
    return number


def _number(value: object) -> float | None:
    """A finite number from a number or a numeric string; None otherwise (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _answer(r: Record, value: object, field: str) -> dict:
    if isinstance(value, str):
        return {"role": "assistant", "content": r.string(value, field)}
    m = r.message(value, field)
    if m["role"] != "assistant":
        r.fail(f"{field}.role", f"expected 'assistant', got {m['role']!r}", "bad structure")
    return m


def _scores(r: Record, k: int) -> list[float]:
    scores = r.get("scores", list)
    if len(scores) != k:
        r.fail("scores", f"has {len(scores)} scores for {k} responses (one score per response)", "length mismatch")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            r.fail(f"scores[{i}]", f"expected a finite number, got {type_name(s) if not isinstance(s, float) else s}",
                   "wrong type")
    return [float(s) for s in scores]


def _ranking(r: Record, k: int) -> list[float]:
    ranking = r.get("ranking", list)
    if len(ranking) != k:
        r.fail("ranking", f"has {len(ranking)} indices for {k} responses (every response, best first)",
               "length mismatch")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ranking) or sorted(ranking) != list(range(k)):
        r.fail("ranking", f"expected each index 0..{k - 1} once, best first, got {ranking}", "bad ranking")
    scores = [0.0] * k
    for position, index in enumerate(ranking):
        scores[index] = float(k - 1 - position)
    return scores


def encode_list(enc, item) -> TokenizedList | DataError:
    """A listwise PreferencePair's ids, each answer tokenized as a pair's answer is (`enc`: a ChatEncoder);
    a record the chat template refuses comes back as a DataError naming its source."""
    try:
        encoded = [enc.encode_prompt_response(item.prompt_messages, answer, item.tools) for answer in item.responses]
    except DataError as e:
        return e
    except ModelError:  # the tokenizer, not the record: stop
        raise
    except Exception as e:  # jinja2 TemplateError and friends raised from inside the template
        return DataError(f"{item.source}: the tokenizer's chat template rejected this conversation: "
                         f"{type(e).__name__}: {e}", "chat template error")
    return TokenizedList(encoded[0][0], [ids for _, ids in encoded], list(item.scores))


PROMPT_FILLS = "prompt fills max_length (empty response after truncation)"


def cut_prompt(prompt_ids: list[int], max_length: int, max_prompt_length: int | None, events: set):
    """The prompt side of the truncation policy, shared by pairs and lists: (prompt keeping its end,
    room left for each answer); adds "prompt_truncated" to `events` when the prompt was cut."""
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
        events.add("prompt_truncated")
    return prompt_ids, max_length - len(prompt_ids)


def truncate_list(row: TokenizedList, max_length: int, max_prompt_length: int | None = None):
    """The pairs' truncation policy on every answer: (row or None, what happened), as `truncate_pair`."""
    events = set()
    prompt, room = cut_prompt(row.prompt_ids, max_length, max_prompt_length, events)
    if room <= 0:
        return None, {PROMPT_FILLS}
    answers = [ids[:room] for ids in row.answer_ids]
    if any(len(a) < len(ids) for a, ids in zip(answers, row.answer_ids)):
        events.add("response_truncated")
    return TokenizedList(prompt, answers, row.scores), events
