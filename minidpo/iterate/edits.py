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
    bullet_list          detectable_format:number_bullet_lists    N "* " bullets: the answer's own items or lines
    divide_paragraphs    length_constraints:number_paragraphs     ... into N paragraphs between *** dividers
    highlight_sentences  detectable_format:number_highlighted_sections  N sentences *highlighted*
    split_in_two         combination:two_responses        the answer's halves between ****** (two answers)
    repeat_request       combination:repeat_prompt        the request, word for word, before the answer
    wrap_in_json         detectable_format:json_format    {"answer": the answer} as JSON

The layout edits (the first four) rebuild the answer, so they run first; they give up (return the answer
unchanged, which the verifier then rejects) when it has too few parts. The bullet edit keeps the answer's own
lines, one bullet per item the model wrote (see `bullet_list`); the other three rebuild it from its sentences.

`edit_answer` applies, in an order where a later edit rarely undoes an earlier one (appends before the
case, quotes last), the edit of each instruction the answer edited so far does not follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from minidpo.verify import check

POSTSCRIPT_TEXT = "I hope this helps."
TITLE_WORDS = 4  # a title made of the answer's first words
_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LINE_MARKER = re.compile(r"^\s*(?:[*\-+]|\d{1,2}[.)])\s+", re.MULTILINE)  # list markers, dropped when rebuilding
# a list item: a line the verifier counts as a bullet ("*" not "**", "-"), or a numbered one ("1." "2)")
_ITEM = re.compile(r"^\s*(?:\*(?!\*)|-|\d{1,2}[.)]\s)")
_HAS_WORD = re.compile(r"[^\W_]")  # a letter or digit: "* *", "* * *" and "---" carry none
RESPONSES_SEPARATOR = "******"


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


def sentences(response: str) -> list[str]:
    """The answer's sentences for the layout edits: list markers and line breaks dropped, cut after . ! ?"""
    flat = " ".join(_LINE_MARKER.sub("", response).split())
    return [s for s in _SENTENCE_END.split(flat) if s.strip("*# ")]


def _groups(items: list[str], n: int) -> list[str] | None:
    """`items` joined into n consecutive groups of near-equal size; None when there are fewer than n."""
    if n < 1 or len(items) < n:
        return None
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(" ".join(items[start:end]))
        start = end
    return out


def bullet_list(response: str, n: int) -> str:
    """Exactly n "* " bullets, each one part the model wrote itself, never several glued together (so the
    chosen answer is a list the model can imitate, and its count is the only thing that changed). Bullet
    lines without a word ("* *", "* * *", "---") are dropped first; then
    - an answer with a list keeps its first n items as bullets ("1." items get "* "), the items past n
      dropped, every other line as it is; with fewer than n items it is left unchanged;
    - an answer without a list and with at least n lines: its first n lines get "* ", the rest as they are;
    - otherwise its first n sentences, one bullet each, the sentences after them a paragraph below the list.
    """
    if n < 1:
        return response
    lines = [line for line in response.splitlines() if not _ITEM.match(line) or _HAS_WORD.search(line)]
    items = [k for k, line in enumerate(lines) if _ITEM.match(line)]
    if items:
        if len(items) < n:
            return response
        kept = set(items[:n])
        listed = "\n".join(f"* {_LINE_MARKER.sub('', line, count=1).strip()}" if k in kept else line
                           for k, line in enumerate(lines) if k in kept or k not in items)
        return re.sub(r"\n{3,}", "\n\n", listed).rstrip()  # the blank lines the dropped items leave
    worded = [k for k, line in enumerate(lines) if _HAS_WORD.search(line)]
    if len(worded) >= n:
        first = set(worded[:n])
        return "\n".join(f"* {line.strip()}" if k in first else line for k, line in enumerate(lines))
    parts = [s.replace("*", "") for s in sentences(response)]
    if len(parts) < n:
        return response
    rest = " ".join(parts[n:])
    return "\n".join(f"* {s}" for s in parts[:n]) + (f"\n\n{rest}" if rest else "")


def divide_paragraphs(response: str, n: int) -> str:
    groups = _groups([s.replace("*", "") for s in sentences(response)], n)
    return response if groups is None else "\n\n***\n\n".join(groups)


def highlight_sentences(response: str, n: int) -> str:
    """The answer's first n sentences wrapped in *...*, on one line, the rest as they are."""
    parts = [s.replace("*", "") for s in sentences(response)]
    if len(parts) < n:
        return response
    return " ".join([f"*{s}*" for s in parts[:n]] + parts[n:])


def split_in_two(response: str) -> str:
    halves = _groups(sentences(response), 2)
    return response if halves is None else f"{halves[0]}\n\n{RESPONSES_SEPARATOR}\n\n{halves[1]}"


def repeat_request(response: str, request: str) -> str:
    return f"{request.strip()}\n\n{response.lstrip()}"


def wrap_in_json(response: str) -> str:
    return json.dumps({"answer": response.strip()}, ensure_ascii=False, indent=2)


# instruction id -> edit(response, kwargs), in the order edit_answer applies them
EDITS: dict[str, Callable[[str, dict], str]] = {
    "detectable_format:number_bullet_lists": lambda r, kw: bullet_list(r, int(kw["num_bullets"])),
    "length_constraints:number_paragraphs": lambda r, kw: divide_paragraphs(r, int(kw["num_paragraphs"])),
    "combination:two_responses": lambda r, kw: split_in_two(r),
    "detectable_format:number_highlighted_sections": lambda r, kw: highlight_sentences(r, int(kw["num_highlights"])),
    "keywords:forbidden_words": lambda r, kw: remove_words(r, kw["forbidden_words"]),
    "detectable_format:title": lambda r, kw: prepend_title(r),
    "detectable_content:postscript": lambda r, kw: append_postscript(r, kw["postscript_marker"]),
    "startend:end_checker": lambda r, kw: append_end_phrase(r, kw["end_phrase"]),
    "punctuation:no_comma": lambda r, kw: remove_commas(r),
    "combination:repeat_prompt": lambda r, kw: repeat_request(r, kw["prompt_to_repeat"]),
    "change_case:english_lowercase": lambda r, kw: lowercase(r),
    "change_case:english_capital": lambda r, kw: uppercase(r),
    "startend:quotation": lambda r, kw: wrap_in_quotes(r),
    "detectable_format:json_format": lambda r, kw: wrap_in_json(r),
}


def edit_answer(response: str, instructions: list[tuple[str, dict]]) -> tuple[str, list[str]]:
    """The answer edited, in EDITS' order, for each given (instruction id, kwargs) with an edit that the
    answer edited so far does not follow (so a title put before a quoted answer is quoted again), and
    the ids edited; kinds without an edit are left as they are."""
    wanted = {instruction_id: kwargs or {} for instruction_id, kwargs in instructions if instruction_id in EDITS}
    edited = []
    for instruction_id, edit in EDITS.items():
        if instruction_id in wanted and not check(instruction_id, wanted[instruction_id], response):
            changed = edit(response, wanted[instruction_id])
            if changed != response:  # a layout edit gives up on an answer with too few sentences
                response = changed
                edited.append(instruction_id)
    return response, edited
