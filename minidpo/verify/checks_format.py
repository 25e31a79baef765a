"""Checks on the shape of an answer: repeats, placeholders, postscripts, sections, lists, highlights,
JSON, titles, how it starts and ends.

Each function takes the answer and the instruction's keyword arguments (validated by
`minidpo.verify.registry`) and says whether the answer follows the instruction, as IFEval defines it
(Zhou et al. 2023, arXiv 2311.07911).
"""

from __future__ import annotations

import json
import re

CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
RESPONSES_SEPARATOR = "******"

# --- combination -----------------------------------------------------------------------------------


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """The answer starts with the request, word for word (any case; whitespace around both ignored)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(response: str) -> bool:
    """Two different answers separated by six asterisks; nothing empty between separators."""
    answers = []
    pieces = response.split(RESPONSES_SEPARATOR)
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif 0 < index < len(pieces) - 1:
            return False
    return len(answers) == 2 and answers[0] != answers[1]


# --- detectable_content ----------------------------------------------------------------------------

def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` placeholders in square brackets, such as [address]."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def _postscript_pattern(marker: str) -> str:
    if marker == "P.P.S":
        return r"\s*p\.\s?p\.\s?s"
    if marker == "P.S.":
        return r"\s*p\.\s?s\."
    # Any other marker: its letters literally and each "." standing for any character, as IFEval's
    # regex reads it (so "P.P.S." also takes "P.P.S:").
    return r"\s*" + ".".join(re.escape(part) for part in marker.lower().split("."))


def postscript(response: str, *, postscript_marker: str) -> bool:
    """A postscript starting with the marker ("P.S." also matches "p. s.", "P.P.S" also "P. P. S"), in
    any case, anywhere in the answer."""
    pattern = _postscript_pattern(postscript_marker.strip()) + r".*$"
    return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None


# --- detectable_format -----------------------------------------------------------------------------

def constrained_response(response: str) -> bool:
    """The answer contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    text = response.strip()
    return any(option in text for option in CONSTRAINED_OPTIONS)


def json_format(response: str) -> bool:
    """The whole answer parses as JSON, optionally inside a ``` fence (```json, ```Json, ```JSON)."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` section headers: the splitter word (case as given) then a number, as in
    "SECTION 1". (IFEval reads the splitter as a regex; its splitters are plain words, matched literally
    here.)"""
    splitter = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(splitter, response)) - 1 >= num_sections


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullets: lines starting with "* " (not "**") or "-"."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty highlights on one line, *like this* or **like this**."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def title(response: str) -> bool:
    """A non-empty title in double angular brackets on one line, such as <<poem of joy>>."""
    return any(found.lstrip("<").rstrip(">").strip() for found in re.findall(r"<<[^\n]+>>", response))


# --- startend --------------------------------------------------------------------------------------

def end_checker(response: str, *, end_phrase: str) -> bool:
    """The answer ends with the phrase (any case; whitespace and double quotes around the answer ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    """The whole answer is wrapped in double quotation marks."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'
