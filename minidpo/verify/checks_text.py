"""Checks on the words of an answer: letter case, keywords, language, length, commas.

Each function takes the answer and the instruction's keyword arguments (already validated by
`minidpo.verify.registry`) and says whether the answer follows the instruction, as IFEval defines it
(Zhou et al. 2023, arXiv 2311.07911, appendix: the 25 instructions). Relations are "less than"
(count < threshold) and "at least" (count >= threshold).
"""

from __future__ import annotations

import re

from minidpo.verify.language import detect_language
from minidpo.verify.text import capital_words, count_sentences, count_words

LESS_THAN, AT_LEAST = "less than", "at least"
RELATIONS = (LESS_THAN, AT_LEAST)


def compare(count: int, relation: str, threshold: int) -> bool:
    """`count < threshold` for "less than", `count >= threshold` for "at least"."""
    return count < threshold if relation == LESS_THAN else count >= threshold


def _is_language(text: str, code: str) -> bool:
    detected = detect_language(text)
    return detected is None or detected == code  # IFEval: an undetectable text follows the instruction


# --- change_case -----------------------------------------------------------------------------------

def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """Words written in capitals only ("NASA", "I", "DON'T" as two) compared with the threshold."""
    return compare(capital_words(response), capital_relation, capital_frequency)


def english_capital(response: str) -> bool:
    """The answer is in English with no lower-case letter (`str.isupper`: some capital, no lower case)."""
    return response.isupper() and _is_language(response, "en")


def english_lowercase(response: str) -> bool:
    """The answer is in English with no capital letter (`str.islower`)."""
    return response.islower() and _is_language(response, "en")


# --- keywords --------------------------------------------------------------------------------------

def _occurrences(keyword: str, response: str) -> int:
    # A substring, any case: "war" counts in "warm", as in IFEval (which passes keywords as regexes; the
    # words its prompts use have no regex syntax, so matching them literally gives the same counts).
    return len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE))


def existence(response: str, *, keywords: list[str]) -> bool:
    """Every keyword appears (as a substring, in any case)."""
    return all(_occurrences(keyword, response) for keyword in keywords)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """None of the words appears as a whole word (between word boundaries, any case)."""
    return not any(re.search(r"\b" + re.escape(word) + r"\b", response, flags=re.IGNORECASE)
                   for word in forbidden_words)


def frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword's occurrences (substring, any case) compared with the threshold."""
    return compare(_occurrences(keyword.strip(), response), relation, frequency)


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """How often one character (a letter in any case, or a sign such as "#" or "!") appears."""
    return compare(response.lower().count(letter.strip().lower()), let_relation, let_frequency)


# --- language --------------------------------------------------------------------------------------

def response_language(response: str, *, language: str) -> bool:
    """The whole answer is in the language with this ISO 639-1 code, as langdetect judges it."""
    return _is_language(response, language)


# --- length_constraints ----------------------------------------------------------------------------

def _first_word(paragraph: str) -> str:
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    return re.split(r"""[.,?!'"]""", word, maxsplit=1)[0].lower()


def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly `num_paragraphs` paragraphs (separated by a blank line, "\\n\\n"), and paragraph
    `nth_paragraph` (from 1) starts with `first_word` (any case; quotes before and punctuation after it
    are ignored)."""
    paragraphs = response.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if nth_paragraph > count:
        return False
    # IFEval picks the paragraph by its place among all the pieces, blank ones included.
    paragraph = paragraphs[nth_paragraph - 1].strip()
    return bool(paragraph) and count == num_paragraphs and _first_word(paragraph) == first_word.lower()


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by the markdown divider `***`; an empty paragraph
    is allowed only before the first divider or after the last."""
    pieces = re.split(r"\s?\*\*\*\s?", response)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if 0 < index < len(pieces) - 1:
                return False
            count -= 1
    return count == num_paragraphs


def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """The number of sentences (`minidpo.verify.text.count_sentences`) compared with the threshold."""
    return compare(count_sentences(response), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    """The number of words (runs of word characters) compared with the threshold."""
    return compare(count_words(response), relation, num_words)


# --- punctuation -----------------------------------------------------------------------------------

def no_comma(response: str) -> bool:
    """No ASCII comma anywhere."""
    return "," not in response
