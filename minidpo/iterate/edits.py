"""The edit lever of the verifier judge: pure string edits that make an answer follow one IFEval
instruction, for the kinds an edit can fix. An edit is only a candidate: the judge keeps it if the
verifier, run again, says the prompt's score rose (minidpo.iterate.verify).

    lowercase            change_case:english_lowercase    str.lower
    uppercase            change_case:english_capital      str.upper
    remove_commas        punctuation:no_comma             every ASCII comma removed
    wrap_in_quotes       startend:quotation               the answer between double quotes
    append_end_phrase    startend:end_checker             the end phrase appended
    append_postscript    detectable_content:postscript    "<marker> I hope this helps." appended
    prepend_title        detectable_format:title          <<Title>> from the answer's first words
    remove_words         keywords:forbidden_words         the words removed (whole words, any case)

`edit_answer` applies, in an order where a later edit rarely undoes an earlier one (appends before the
case, quotes last), the edit of each instruction the answer edited so far does not follow.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from minidpo.verify import check

POSTSCRIPT_TEXT = "I hope this helps."
TITLE_WORDS = 4  # a title made of the answer's first words
_WORD = re.compile(r"[A-Za-z0-9']+")


def lowercase(response: str) -> str:
    return response.lower()


def uppercase(response: str) -> str:
    return response.upper()


def remove_commas(response: str) -> str:
    return response.replace(",", "")


def wrap_in_quotes(response: str) -> str:
    return f'"{response.strip()}"'


def append_end_phrase(response: str, end_phrase: str) -> str:
    return f"{response.rstrip()} {end_phrase.strip()}"


def append_postscript(response: str, marker: str) -> str:
    return f"{response.rstrip()}\n\n{marker.strip()} {POSTSCRIPT_TEXT}"


def prepend_title(response: str) -> str:
    """<<First Few Words>> on a line of its own before the answer (<<Answer>> when it has no words)."""
    words = _WORD.findall(response)[:TITLE_WORDS]
    title = " ".join(w.capitalize() for w in words) or "Answer"
    return f"<<{title}>>\n\n{response.lstrip()}"


def remove_words(response: str, words: list[str]) -> str:
    """Each word removed where it stands as a whole word (any case), with the spaces it leaves tidied."""
    for word in words:
        response = re.sub(r"\b" + re.escape(word.strip()) + r"\b", "", response, flags=re.IGNORECASE)
    response = re.sub(r"[ \t]{2,}", " ", response)
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", response)


# instruction id -> edit(response, kwargs), in the order edit_answer applies them
EDITS: dict[str, Callable[[str, dict], str]] = {
    "keywords:forbidden_words": lambda r, kw: remove_words(r, kw["forbidden_words"]),
    "detectable_format:title": lambda r, kw: prepend_title(r),
    "detectable_content:postscript": lambda r, kw: append_postscript(r, kw["postscript_marker"]),
    "startend:end_checker": lambda r, kw: append_end_phrase(r, kw["end_phrase"]),
    "punctuation:no_comma": lambda r, kw: remove_commas(r),
    "change_case:english_lowercase": lambda r, kw: lowercase(r),
    "change_case:english_capital": lambda r, kw: uppercase(r),
    "startend:quotation": lambda r, kw: wrap_in_quotes(r),
}


def edit_answer(response: str, instructions: list[tuple[str, dict]]) -> tuple[str, list[str]]:
    """The answer edited, in EDITS' order, for each given (instruction id, kwargs) with an edit that the
    answer edited so far does not follow (so a title put before a quoted answer is quoted again), and
    the ids edited; kinds without an edit are left as they are."""
    wanted = {instruction_id: kwargs or {} for instruction_id, kwargs in instructions if instruction_id in EDITS}
    edited = []
    for instruction_id, edit in EDITS.items():
        if instruction_id in wanted and not check(instruction_id, wanted[instruction_id], response):
            response = edit(response, wanted[instruction_id])
            edited.append(instruction_id)
    return response, edited
