"""Counting words, sentences and all-capital words the way IFEval does, without NLTK's data files.

IFEval (Zhou et al. 2023) counts with NLTK: words with the regex tokenizer `\\w+` (reproduced exactly
here), sentences with the pre-trained Punkt model for English, and all-capital words with
`nltk.word_tokenize` (Punkt, then the Treebank word tokenizer). Punkt's model is a data file that cannot be
downloaded here, so `count_sentences` and `capital_words` follow its rules by hand:

Sentences. A sentence ends at `.`, `?` or `!` (closing quotes, brackets or `*` may follow) when whitespace
and another token come next; a full stop at the end of the text, inside a token ("3.14", "a.b") or in a
line without any of the three marks ends nothing, so a bullet list without full stops is one sentence, as
in Punkt. Punkt's statistics decide a full stop after an abbreviation, an initial or an ellipsis from what
it learnt about the next word; here it ends a sentence only when the next word is capitalised and is a
common sentence opener ("Dr. Smith" goes on, "etc. The" ends); after a number ("in 2023. The", "1. Mix")
it ends one unless the next word starts in lower case, as in Punkt. Where this may differ from Punkt:
abbreviations outside the list below, unusual words after an abbreviation or ellipsis, and runs of `?!`
(one end here; some NLTK versions count the second mark as a sentence of its own).

All-capital words. Tokens are whitespace-separated chunks, cut at the characters the Treebank tokenizer
splits off (quotes, brackets, `, ; : ? ! @ # $ % &`, `--`, `...`; commas and colons only when no digit
follows), with English contractions split as Treebank splits them ("DON'T" -> "DO", "N'T"; "NASA's" ->
"NASA", "'s"); a token counts when `str.isupper()` holds, so "I" and "A" count and "AI-based" does not.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")

# Punctuation that may close a sentence after its end mark ('He said "no." Then ...').
_CLOSERS = "\"')]}*»”’"
_QUOTES_CLOSING = "\"')]}»”’"  # a token of these alone joins the sentence before (Punkt's realignment)
_OPENERS = "\"'([{*«“‘`"
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.\-]*$")
_DOTTED = re.compile(r"^(?:[^\W\d_]\.)+[^\W\d_]$")  # e.g, i.e, U.S, a.m (their last period removed)
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs etc inc ltd co corp dept est approx cf al gen gov sen rep rev lt col capt
sgt cpl pvt adm fig vol pp ed eds jan feb aug sept oct nov dec mon tue tues wed thu thur thurs fri sat
""".split())
# Words Punkt's English model knows to open sentences: after an abbreviation, initial or ellipsis, a
# capitalised word from this list ends the sentence; any other (a name) continues it.
SENTENCE_OPENERS = frozenset("""
a an the this that these those it its he she we they i you there here his her our their my your
but and or so yet however therefore thus then also finally first second third next last now today
in on at for from with without by after before during while when where what why how who which if
although though because since as once unless until no not some many most all each every both one
let please note remember consider imagine use make take try do be is are was were can will would should
""".split())

_TREEBANK_SPLIT = re.compile(r"""[\s"“”«»()\[\]{}<>;?!@#$%&]+|--+|\.\.\.|[,:](?!\d)""")
_CONTRACTION = re.compile(r"(?i)^(.*[^'])('s|'m|'d|'ll|'re|'ve|n't)$")
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "gimme": 3, "lemme": 3}


def count_words(text: str) -> int:
    """Runs of word characters (`\\w+`), IFEval's word count exactly."""
    return len(WORD.findall(text))


def _opens_sentence(token: str) -> bool:
    word = token.lstrip(_OPENERS).rstrip(_CLOSERS + ".,;:?!")
    return bool(word) and word[0].isupper() and word.lower() in SENTENCE_OPENERS


def _ends_sentence(token: str, following: str) -> bool:
    """Whether the whitespace between `token` and `following` is a sentence boundary."""
    core = token.rstrip(_CLOSERS)
    if not core or core[-1] not in ".?!":
        return False
    if core[-1] in "?!":
        return True
    if core.endswith(".."):  # an ellipsis
        return _opens_sentence(following)
    word = core[:-1].lstrip(_OPENERS)
    if _NUMBER.match(word):
        start = following.lstrip(_OPENERS)
        return not (start[:1].isalpha() and start[:1].islower())
    if (len(word) == 1 and word.isalpha()) or word.lower() in ABBREVIATIONS or _DOTTED.match(word):
        return _opens_sentence(following)
    return True


def sentence_chunks(text: str) -> list[list[str]]:
    """The text's whitespace-separated tokens grouped into sentences (see the module's notes)."""
    tokens: list[str] = []
    for token in text.split():
        if tokens and not token.strip(_QUOTES_CLOSING):  # a lone closing quote belongs to the sentence before
            tokens[-1] += token
        else:
            tokens.append(token)
    sentences: list[list[str]] = []
    current: list[str] = []
    for i, token in enumerate(tokens):
        current.append(token)
        if i + 1 < len(tokens) and _ends_sentence(token, tokens[i + 1]):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def count_sentences(text: str) -> int:
    """The number of sentences, following Punkt's English rules as closely as the notes above say."""
    return len(sentence_chunks(text))


def _split_contraction(piece: str) -> list[str]:
    word = piece.rstrip(".")  # a sentence's final period is a token of its own
    cut = _SPLIT_WORDS.get(word.lower())
    if cut:
        return [word[:cut], word[cut:]]
    match = _CONTRACTION.match(word)
    return [match.group(1), match.group(2)] if match else [piece]


def word_tokens(text: str) -> list[str]:
    """Word tokens as NLTK's `word_tokenize` cuts them where it matters for letter case (module notes)."""
    tokens: list[str] = []
    for piece in _TREEBANK_SPLIT.split(text):
        if piece:
            tokens.extend(_split_contraction(piece))
    return tokens


def capital_words(text: str) -> int:
    """Tokens written in capitals only (`str.isupper`): IFEval's capital-word count."""
    return sum(1 for token in word_tokens(text) if token.isupper())
