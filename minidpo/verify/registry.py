"""The 25 IFEval instructions by id, their keyword arguments, and strict and loose verdicts.

`check(instruction_id, kwargs, response)` is IFEval's strict verdict; `check_loose` its loose one (Zhou et
al. 2023, section 2.2): the answer also passes if any of its variants passes, the variants being the answer
with its first line, its last line or both removed, each with or without every `*` removed.

kwargs are IFEval's: records often carry every argument of every instruction with null for those that do
not apply, so keys whose value is None are ignored; a missing argument, an unknown one or a wrong type is
a DataError naming the field (`where` puts the file and line in front of it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from minidpo.errors import DataError
from minidpo.verify import checks_format as fmt
from minidpo.verify import checks_text as txt

# Argument types: a whole number >= 0, >= 1, a non-empty string, one character, a non-empty list of
# non-empty strings, or a relation ("less than" / "at least").
COUNT, POSITION, TEXT, CHAR, WORDS, RELATION = "count", "position", "text", "char", "words", "relation"


@dataclass(frozen=True)
class Instruction:
    id: str
    check: Callable[..., bool]
    arguments: tuple[tuple[str, str], ...] = ()


INSTRUCTIONS: dict[str, Instruction] = {spec.id: spec for spec in (
    Instruction("change_case:capital_word_frequency", txt.capital_word_frequency,
                (("capital_frequency", COUNT), ("capital_relation", RELATION))),
    Instruction("change_case:english_capital", txt.english_capital),
    Instruction("change_case:english_lowercase", txt.english_lowercase),
    Instruction("combination:repeat_prompt", fmt.repeat_prompt, (("prompt_to_repeat", TEXT),)),
    Instruction("combination:two_responses", fmt.two_responses),
    Instruction("detectable_content:number_placeholders", fmt.number_placeholders, (("num_placeholders", COUNT),)),
    Instruction("detectable_content:postscript", fmt.postscript, (("postscript_marker", TEXT),)),
    Instruction("detectable_format:constrained_response", fmt.constrained_response),
    Instruction("detectable_format:json_format", fmt.json_format),
    Instruction("detectable_format:multiple_sections", fmt.multiple_sections,
                (("section_spliter", TEXT), ("num_sections", COUNT))),
    Instruction("detectable_format:number_bullet_lists", fmt.number_bullet_lists, (("num_bullets", COUNT),)),
    Instruction("detectable_format:number_highlighted_sections", fmt.number_highlighted_sections,
                (("num_highlights", COUNT),)),
    Instruction("detectable_format:title", fmt.title),
    Instruction("keywords:existence", txt.existence, (("keywords", WORDS),)),
    Instruction("keywords:forbidden_words", txt.forbidden_words, (("forbidden_words", WORDS),)),
    Instruction("keywords:frequency", txt.frequency,
                (("keyword", TEXT), ("frequency", COUNT), ("relation", RELATION))),
    Instruction("keywords:letter_frequency", txt.letter_frequency,
                (("letter", CHAR), ("let_frequency", COUNT), ("let_relation", RELATION))),
    Instruction("language:response_language", txt.response_language, (("language", TEXT),)),
    Instruction("length_constraints:nth_paragraph_first_word", txt.nth_paragraph_first_word,
                (("num_paragraphs", COUNT), ("nth_paragraph", POSITION), ("first_word", TEXT))),
    Instruction("length_constraints:number_paragraphs", txt.number_paragraphs, (("num_paragraphs", COUNT),)),
    Instruction("length_constraints:number_sentences", txt.number_sentences,
                (("num_sentences", COUNT), ("relation", RELATION))),
    Instruction("length_constraints:number_words", txt.number_words, (("num_words", COUNT), ("relation", RELATION))),
    Instruction("punctuation:no_comma", txt.no_comma),
    Instruction("startend:end_checker", fmt.end_checker, (("end_phrase", TEXT),)),
    Instruction("startend:quotation", fmt.quotation),
)}


def _value_error(kind: str, value) -> str | None:
    """What is wrong with `value` for an argument of this type, or None."""
    if kind in (COUNT, POSITION):
        low = 1 if kind == POSITION else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"expected a whole number >= {low}, got {value!r}"
    elif kind == RELATION:
        if value not in txt.RELATIONS:
            return f"expected \"less than\" or \"at least\", got {value!r}"
    elif kind == WORDS:
        if not isinstance(value, list) or not value or not all(isinstance(w, str) and w.strip() for w in value):
            return f"expected a non-empty list of words, got {value!r}"
    elif not isinstance(value, str) or not value.strip():
        return f"expected a non-empty string, got {value!r}"
    elif kind == CHAR and len(value.strip()) != 1:
        return f"expected one character, got {value!r}"
    return None


def parse_kwargs(instruction_id: str, kwargs: Mapping | None, where: str = "") -> dict:
    """The instruction's arguments from an IFEval kwargs dict (None-valued keys ignored), checked.

    where: what the error message puts before the field, e.g. "input.jsonl:7:kwargs[1]"."""
    where = where or f"{instruction_id} kwargs"
    spec = INSTRUCTIONS.get(instruction_id)
    if spec is None:
        raise DataError(f"{where}: unknown instruction id {instruction_id!r}", reason="unknown instruction")
    if not isinstance(kwargs, Mapping):
        raise DataError(f"{where}: expected an object of arguments, got {kwargs!r}", reason="bad field")
    given = {key: value for key, value in kwargs.items() if value is not None}
    names = dict(spec.arguments)
    for key in given:
        if key not in names:
            takes = ", ".join(names) or "no arguments"
            raise DataError(f"{where}.{key}: not an argument of {instruction_id} (it takes {takes})",
                            reason="bad field")
    for name, kind in spec.arguments:
        if name not in given:
            raise DataError(f"{where}.{name}: missing (required by {instruction_id})", reason="missing field")
        problem = _value_error(kind, given[name])
        if problem:
            raise DataError(f"{where}.{name}: {problem}", reason="bad field")
    return given


def verdict(instruction_id: str, kwargs: Mapping | None, where: str = "") -> Callable[[str], bool]:
    """A function answer -> strict verdict, its arguments checked once. An empty answer follows nothing."""
    spec, arguments = INSTRUCTIONS.get(instruction_id), parse_kwargs(instruction_id, kwargs, where)
    return lambda response: bool(response.strip()) and spec.check(response, **arguments)


def loose_variants(response: str) -> list[str]:
    """The answer and the seven variants the loose verdict also tries, in IFEval's order."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    trimmed = [without_first, without_last, without_both]
    return [response, response.replace("*", ""), *trimmed, *(t.replace("*", "") for t in trimmed)]


def check(instruction_id: str, kwargs: Mapping | None, response: str) -> bool:
    """Whether `response` follows the instruction, strictly."""
    return verdict(instruction_id, kwargs)(response)


def check_loose(instruction_id: str, kwargs: Mapping | None, response: str) -> bool:
    """Whether `response` or one of its loose variants follows the instruction."""
    follows = verdict(instruction_id, kwargs)
    return any(follows(variant) for variant in loose_variants(response))
