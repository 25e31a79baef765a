"""The constraints our training prompts add to a base task: for each IFEval instruction id, how its
keyword arguments are drawn and the sentences that ask for it (written here, not IFEval's wording).

The last phrasing of each kind is held out: only the held-out split uses it. Pairs that cannot both be
followed, or that make a prompt confusing, are listed in EXCLUSIVE (at most one of each group) and
CONFLICTS.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from minidpo.verify import tasks as T
from minidpo.verify.language import LANGUAGES

Draw = Callable[[random.Random], tuple[dict, dict]]
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}


@dataclass(frozen=True)
class Kind:
    id: str
    phrasings: tuple[str, ...]  # str.format templates; the last one is held out
    draw: Draw  # rng -> (kwargs, extra template fields)


def _bound(rng: random.Random, relation: str, n: int) -> str:
    """How a prompt says "less than n" / "at least n"."""
    if relation == "less than":
        return rng.choice([f"fewer than {n}", f"less than {n}"] + ([f"at most {n - 1}"] if n > 2 else []))
    return rng.choice([f"at least {n}", f"{n} or more", f"no fewer than {n}"])


def _counted(key: str, relation_key: str, less: range, least: range) -> Draw:
    def draw(rng: random.Random) -> tuple[dict, dict]:
        relation = rng.choice(("less than", "at least"))
        n = rng.choice(less if relation == "less than" else least)
        return {key: n, relation_key: relation}, {"bound": _bound(rng, relation, n)}
    return draw


def _none(rng: random.Random) -> tuple[dict, dict]:
    return {}, {}


def _quoted(words: list[str], joiner: str) -> str:
    """'the word "a"', 'the words "a" and "b"', 'the words "a", "b" or "c"'."""
    quoted = [f'"{w}"' for w in words]
    if len(quoted) == 1:
        return f"the word {quoted[0]}"
    return "the words " + ", ".join(quoted[:-1]) + f" {joiner} " + quoted[-1]


def _keywords(rng):
    words = rng.sample(T.KEYWORDS, rng.randint(1, 3))
    return {"keywords": words}, {"words": _quoted(words, "and")}


def _forbidden(rng):
    words = rng.sample(T.COMMON_WORDS, rng.randint(1, 3))
    return {"forbidden_words": words}, {"words": _quoted(words, "or")}


def _frequency(rng):
    relation = rng.choice(("less than", "at least"))
    if relation == "less than":
        keyword, n = rng.choice(T.COMMON_WORDS), rng.randint(2, 4)
    else:
        keyword, n = rng.choice(T.KEYWORDS), rng.randint(2, 5)
    return ({"keyword": keyword, "frequency": n, "relation": relation},
            {"keyword": keyword, "bound": _bound(rng, relation, n)})


def _letter(rng):
    relation = rng.choice(("less than", "at least"))
    if relation == "less than":
        letter, n = rng.choice(T.RARE_LETTERS), rng.randint(2, 5)
    else:
        letter, n = rng.choice(T.COMMON_LETTERS), rng.randint(5, 25)
    return ({"letter": letter, "let_frequency": n, "let_relation": relation},
            {"letter": letter, "bound": _bound(rng, relation, n)})


def _language(rng):
    code = rng.choice(T.TRAIN_LANGUAGES)
    return {"language": code}, {"name": LANGUAGES[code]}


def _nth_paragraph(rng):
    total = rng.randint(2, 5)
    nth = rng.randint(1, total)
    word = rng.choice(T.FIRST_WORDS)
    return ({"num_paragraphs": total, "nth_paragraph": nth, "first_word": word},
            {"num": total, "nth": nth, "ordinal": ORDINALS[nth], "word": word})


def _sections(rng):
    word, n = rng.choice(T.SECTION_WORDS), rng.randint(2, 5)
    return {"section_spliter": word, "num_sections": n}, {"word": word, "n": n}


def _count(key: str, values: range) -> Draw:
    def draw(rng: random.Random) -> tuple[dict, dict]:
        n = rng.choice(values)
        return {key: n}, {"n": n}
    return draw


def _choice(key: str, values: tuple[str, ...], field: str) -> Draw:
    def draw(rng: random.Random) -> tuple[dict, dict]:
        value = rng.choice(values)
        return {key: value}, {field: value}
    return draw


OPTIONS = '"My answer is yes.", "My answer is no." or "My answer is maybe."'

KINDS: dict[str, Kind] = {kind.id: kind for kind in (
    Kind("change_case:capital_word_frequency", (
        "Use {bound} words written entirely in capital letters.",
        "Your reply should contain {bound} fully capitalized words (LIKE THIS).",
        "Include {bound} words in ALL CAPS for emphasis.",
        "The number of all-uppercase words in your response must be {bound}.",
    ), _counted("capital_frequency", "capital_relation", range(3, 11), range(2, 9))),
    Kind("change_case:english_capital", (
        "Write your whole answer in English using only capital letters.",
        "Your reply must be in English and entirely in uppercase with no lowercase letters.",
        "Answer in English and type every letter as a capital.",
        "Everything you write should be English in uppercase letters only.",
    ), _none),
    Kind("change_case:english_lowercase", (
        "Write everything in English in lowercase letters only; do not use a single capital letter.",
        "Keep every letter of your English reply lowercase, even at the start of sentences.",
        "Reply in English using only small letters (no capitals at all).",
        "Use no uppercase letters anywhere: your English answer must be all lowercase.",
    ), _none),
    Kind("combination:repeat_prompt", (
        'Begin your reply by copying this request word for word: "{request}" Then give your answer.',
        'Start by restating "{request}" exactly as written and only then respond.',
        'Before you answer, repeat the request verbatim: {request}',
        'Your response has to open with the exact words "{request}" before anything else.',
    ), _none),  # prompt_to_repeat is the task: filled in by the generator
    Kind("combination:two_responses", (
        "Give two distinct answers separated by a line of six asterisks (******).",
        "Write two different versions and put ****** between them.",
        "Provide two alternative responses divided by exactly six asterisks (******).",
        "I want two separate takes on this that differ from each other with ****** as the only divider.",
    ), _none),
    Kind("detectable_content:number_placeholders", (
        "Include at least {n} placeholders in square brackets, for example [name].",
        "Leave at least {n} blanks for me to fill in, written in square brackets like [date].",
        "Use {n} or more bracketed placeholders such as [city] in your answer.",
        "Mark at least {n} spots to be filled in later with square-bracket placeholders like [company].",
    ), _count("num_placeholders", range(1, 6))),
    Kind("detectable_content:postscript", (
        'End with a postscript that starts with "{marker}".',
        'After your main answer add a note beginning with "{marker}".',
        'Finish by adding a postscript introduced by "{marker}".',
        'Close your reply with a short afterthought labelled "{marker}".',
    ), _choice("postscript_marker", T.POSTSCRIPT_MARKERS, "marker")),
    Kind("detectable_format:constrained_response", (
        "Your reply must include one of these exact sentences: " + OPTIONS + ".",
        "Pick one of " + OPTIONS + " and use it word for word.",
        "Give your verdict using exactly one of these sentences: " + OPTIONS + ".",
        "Respond by choosing among " + OPTIONS + " and copy your choice exactly.",
    ), _none),
    Kind("detectable_format:json_format", (
        "Format your entire reply as valid JSON.",
        "Return your answer as a JSON object and nothing else (a ```json fence is fine).",
        "Output only JSON with no text before or after it.",
        "Structure the whole response as JSON data that a program could parse.",
    ), _none),
    Kind("detectable_format:multiple_sections", (
        'Divide your answer into {n} sections and start each with "{word} X" where X is its number.',
        "Organize the response in {n} parts labelled {word} 1, {word} 2 and so on.",
        "Split it into {n} numbered sections, each headed {word} followed by the number.",
        "Use {n} sections; mark the start of every one with '{word} N' (N = 1, 2 ...).",
    ), _sections),
    Kind("detectable_format:number_bullet_lists", (
        "Use exactly {n} bullet points written with markdown '* '.",
        'Include a list of exactly {n} markdown bullets (lines starting with "* ").',
        'Present your answer as exactly {n} bullet points, each on its own line starting with "* ".',
        "Your answer needs precisely {n} markdown bullet points, no more and no fewer.",
    ), _count("num_bullets", range(2, 7))),
    Kind("detectable_format:number_highlighted_sections", (
        "Emphasize at least {n} phrases by wrapping them in single asterisks, like *an important phrase*.",
        "Mark {n} or more key passages in markdown italics, such as *key passage*.",
        "Put asterisks around at least {n} important parts of your answer (for example *this*).",
        "Make at least {n} pieces of text stand out using *asterisk highlighting*.",
    ), _count("num_highlights", range(1, 5))),
    Kind("detectable_format:title", (
        "Give your answer a title wrapped in double angle brackets, such as <<A Quiet Morning>>.",
        "Start with a title placed inside << and >>.",
        "Include a title written like <<Title Here>>.",
        "Put a heading in double angular brackets (for example <<My Heading>>) somewhere in the answer.",
    ), _none),
    Kind("keywords:existence", (
        "Make sure to mention {words}.",
        "Your answer must include {words}.",
        "Work the words {words} into your response.",
        "Somewhere in your text use {words}.",
    ), _keywords),
    Kind("keywords:forbidden_words", (
        "Avoid the words {words} entirely.",
        "Never use {words} in your answer.",
        "Your response must not contain {words}.",
        "Write it without using {words} anywhere.",
    ), _forbidden),
    Kind("keywords:frequency", (
        'Use the word "{keyword}" {bound} times.',
        'The word "{keyword}" should appear {bound} times in your reply.',
        'Mention "{keyword}" {bound} times.',
        'Count your uses of "{keyword}": it must appear {bound} times.',
    ), _frequency),
    Kind("keywords:letter_frequency", (
        'The letter "{letter}" should appear {bound} times in your answer.',
        "Use the letter {letter} {bound} times.",
        "Make sure the character '{letter}' occurs {bound} times.",
        "Count every '{letter}' you write: there must be {bound} of them.",
    ), _letter),
    Kind("language:response_language", (
        "Write your entire answer in {name} with no other language.",
        "Respond only in {name}.",
        "Your reply must be written in {name} from start to finish.",
        "Use {name} for the whole response and do not switch to English.",
    ), _language),
    Kind("length_constraints:nth_paragraph_first_word", (
        'Write {num} paragraphs separated by blank lines. Paragraph {nth} must begin with the word "{word}".',
        'Your answer should have exactly {num} paragraphs with an empty line between them, and the {ordinal} '
        'paragraph has to start with "{word}".',
        "Use {num} paragraphs (separate them with an empty line) and start paragraph number {nth} with the "
        "word {word}.",
        'Make it {num} paragraphs long with blank lines between them, and open the {ordinal} one with "{word}".',
    ), _nth_paragraph),
    Kind("length_constraints:number_paragraphs", (
        "Write exactly {n} paragraphs separated from each other by the markdown divider ***.",
        "Your answer should have {n} paragraphs with *** on its own line between each pair.",
        "Split the response into exactly {n} paragraphs and put *** between consecutive paragraphs.",
        "Use {n} paragraphs in total and separate them with three asterisks (***).",
    ), _count("num_paragraphs", range(2, 6))),
    Kind("length_constraints:number_sentences", (
        "Your answer should contain {bound} sentences.",
        "Respond in {bound} sentences.",
        "Use {bound} sentences in total.",
        "Keep the number of sentences in your reply to {bound}.",
    ), _counted("num_sentences", "relation", range(3, 11), range(3, 13))),
    Kind("length_constraints:number_words", (
        "Answer in {bound} words.",
        "Your response should be {bound} words long.",
        "Use {bound} words.",
        "The length of your reply must be {bound} words.",
    ), _counted("num_words", "relation", range(40, 201, 20), range(50, 301, 25))),
    Kind("punctuation:no_comma", (
        "Do not use any commas in your response.",
        "Write without a single comma.",
        "Avoid commas completely.",
        "Commas are not allowed anywhere in your answer.",
    ), _none),
    Kind("startend:end_checker", (
        'End your response with the exact phrase "{phrase}" and nothing after it.',
        "The very last words of your answer must be: {phrase}",
        'Close with "{phrase}" word for word and write nothing after it.',
        'Make "{phrase}" the final sentence of your reply with no text following it.',
    ), _choice("end_phrase", T.END_PHRASES, "phrase")),
    Kind("startend:quotation", (
        "Put your entire reply inside double quotes.",
        'Enclose the answer in a pair of double quotation marks (").',
        "Start and end your response with a double quote character.",
        "Your whole response should sit between two double quotation marks.",
    ), _none),
)}

_CASE = {"change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
         "language:response_language"}
_STRUCTURE = {"detectable_format:json_format", "detectable_format:multiple_sections",
              "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
              "combination:two_responses", "detectable_format:constrained_response"}
EXCLUSIVE = (_CASE, _STRUCTURE, {"length_constraints:number_words", "length_constraints:number_sentences"})
_PAIRS = {
    "change_case:english_lowercase": ("detectable_format:constrained_response", "detectable_format:multiple_sections"),
    "change_case:english_capital": ("detectable_format:constrained_response", "detectable_format:multiple_sections"),
    "language:response_language": ("keywords:existence", "keywords:frequency", "keywords:letter_frequency",
                                   "startend:end_checker", "detectable_format:constrained_response",
                                   "combination:repeat_prompt", "length_constraints:nth_paragraph_first_word"),
    "detectable_format:json_format": ("punctuation:no_comma", "startend:quotation", "combination:repeat_prompt",
                                      "startend:end_checker", "detectable_content:postscript",
                                      "detectable_format:number_bullet_lists"),
    "combination:two_responses": ("combination:repeat_prompt", "detectable_format:number_bullet_lists"),
    "combination:repeat_prompt": ("punctuation:no_comma", "keywords:letter_frequency", "startend:quotation",
                                  "length_constraints:nth_paragraph_first_word"),
    "startend:end_checker": ("detectable_content:postscript",),
    "change_case:capital_word_frequency": ("detectable_format:multiple_sections", "detectable_content:postscript"),
}
CONFLICTS = frozenset(frozenset((a, b)) for a, others in _PAIRS.items() for b in others)


def compatible(kinds: list[str], candidate: str) -> bool:
    """Whether `candidate` can join a prompt that already asks for `kinds`."""
    if candidate in kinds:
        return False
    for group in EXCLUSIVE:
        if candidate in group and any(kind in group for kind in kinds):
            return False
    return all(frozenset((kind, candidate)) not in CONFLICTS for kind in kinds)
