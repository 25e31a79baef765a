"""Reading IFEval's input format and answer files, every problem one DataError naming file:line:field.

Input, one JSON object a line (google-research's instruction_following_eval/data/input_data.jsonl, or
the google/IFEval dataset exported as JSONL):
    {"key": 7, "prompt": "...", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
Answers, one a line: {"key": 7, "response": "..."}, or {"prompt": "...", "response": "..."} matched by the
prompt's text (as IFEval's own response files are).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from minidpo.errors import DataError
from minidpo.verify.registry import INSTRUCTIONS, parse_kwargs


@dataclass(frozen=True)
class IFEvalRecord:
    key: int | str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]

    def to_json(self) -> dict:
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": self.instruction_id_list,
                "kwargs": self.kwargs}


@dataclass(frozen=True)
class Answer:
    key: int | str | None  # None: matched by `prompt`
    prompt: str | None
    response: str
    line: int


def json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; a line that is not a JSON object is
    one DataError naming file:line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: malformed JSON ({e.msg}, column {e.colno})",
                                reason="malformed JSON") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}",
                                reason="malformed JSON")
            yield number, obj


def _field(obj: dict, name: str, types: type | tuple, what: str, where: str):
    if name not in obj:
        raise DataError(f"{where}:{name}: missing field", reason="missing field")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise DataError(f"{where}:{name}: expected {what}, got {value!r}"[:300], reason="bad field")
    return value


def parse_record(obj: dict, where: str) -> IFEvalRecord:
    """One input record, checked (`where` is "file:line"). Unknown instruction ids are kept, unchecked:
    scoring counts them as not followed and reports them."""
    key = _field(obj, "key", (int, str), "an integer or string", where)
    prompt = _field(obj, "prompt", str, "a string", where)
    ids = _field(obj, "instruction_id_list", list, "a list of instruction ids", where)
    kwargs = _field(obj, "kwargs", list, "a list of argument objects", where)
    for i, instruction_id in enumerate(ids):
        if not isinstance(instruction_id, str):
            raise DataError(f"{where}:instruction_id_list[{i}]: expected a string, got {instruction_id!r}",
                            reason="bad field")
    if len(kwargs) != len(ids):
        raise DataError(f"{where}:kwargs: {len(kwargs)} argument objects for {len(ids)} instructions",
                        reason="bad field")
    for i, (instruction_id, arguments) in enumerate(zip(ids, kwargs)):
        if instruction_id in INSTRUCTIONS:
            parse_kwargs(instruction_id, arguments, f"{where}:kwargs[{i}]")
        elif not isinstance(arguments, dict):
            raise DataError(f"{where}:kwargs[{i}]: expected an object of arguments, got {arguments!r}",
                            reason="bad field")
    return IFEvalRecord(key=key, prompt=prompt, instruction_id_list=list(ids), kwargs=list(kwargs))


def read_ifeval(path: str | Path) -> list[IFEvalRecord]:
    """The records of an IFEval-format JSONL file; duplicate keys and an empty file are errors."""
    records: list[IFEvalRecord] = []
    seen: dict = {}
    for number, obj in json_lines(path):
        record = parse_record(obj, f"{path}:{number}")
        if record.key in seen:
            raise DataError(f"{path}:{number}:key: duplicate key {record.key!r} (first on line {seen[record.key]})",
                            reason="duplicate")
        seen[record.key] = number
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records (expected one IFEval prompt a line)", reason="empty")
    return records


def read_answers(path: str | Path) -> list[Answer]:
    """The answers of a JSONL file: "response" and either "key" or "prompt" on each line."""
    answers: list[Answer] = []
    seen: dict = {}
    for number, obj in json_lines(path):
        where = f"{path}:{number}"
        response = _field(obj, "response", str, "a string", where)
        if "key" in obj:
            key, prompt = _field(obj, "key", (int, str), "an integer or string", where), None
            ident = ("key", str(key))
        elif "prompt" in obj:
            key, prompt = None, _field(obj, "prompt", str, "a string", where)
            ident = ("prompt", prompt)
        else:
            raise DataError(f"{where}:key: missing field (an answer needs \"key\" or \"prompt\")",
                            reason="missing field")
        if ident in seen:
            raise DataError(f"{where}:{ident[0]}: a second answer to the same prompt (first on line "
                            f"{seen[ident]})", reason="duplicate")
        seen[ident] = number
        answers.append(Answer(key=key, prompt=prompt, response=response, line=number))
    return answers


def match_answers(records: list[IFEvalRecord], answers: list[Answer]) -> tuple[list[str | None], list[Answer]]:
    """Each record's response (None where no answer names it) and the answers that name no record.
    Keys match as text: an answer's "7" answers the record whose key is 7."""
    by_key = {str(a.key): a for a in answers if a.key is not None}
    by_prompt = {a.prompt: a for a in answers if a.key is None}
    used: set[int] = set()
    responses: list[str | None] = []
    for record in records:
        answer = by_key.get(str(record.key)) or by_prompt.get(record.prompt)
        if answer is not None:
            used.add(answer.line)
        responses.append(answer.response if answer is not None else None)
    return responses, [a for a in answers if a.line not in used]
