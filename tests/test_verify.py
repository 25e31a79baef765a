"""minidpo.verify: each of IFEval's 25 instruction checkers, passing and failing answers and edge cases."""

from __future__ import annotations

import pytest

from minidpo.errors import ConfigError, DataError
from minidpo.verify import INSTRUCTIONS, check, check_loose, count_sentences, count_words
from minidpo.verify.text import capital_words

AT_LEAST, LESS = "at least", "less than"

# (instruction id, kwargs, an answer that follows it, an answer that does not)
CASES = [
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AT_LEAST},
     "THE QUICK brown fox", "The quick brown fox"),
    ("change_case:english_capital", {}, "THIS IS A LOUD ANSWER ABOUT THE SEA AND THE SKY.",
     "THIS IS A LOUD ANSWER about the sea."),
    ("change_case:english_lowercase", {}, "this is a quiet answer about the sea and the sky.",
     "This is a quiet answer about the sea and the sky."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about rain."},
     "Write a poem about rain.\nDrops on the roof...", "Sure! Write a poem about rain."),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see you at [address].",
     "Dear [name], see you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Main text.\nP.S. Bring a coat.",
     "Main text.\nPS Bring a coat."),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "my answer is maybe."),
    ("detectable_format:json_format", {}, '{"answer": 42}', 'The answer: {"answer": 42}'),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nOne.\nSECTION 2\nTwo.", "SECTION 1\nOne.\nSection 2\nTwo."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two\n- three", "* one\n* two"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *first* and **second** idea.",
     "A *first* and ** ** idea."),
    ("detectable_format:title", {}, "<<Rain on the Roof>>\nDrops fall.", "<< >>\nDrops fall."),
    ("keywords:existence", {"keywords": ["river", "lamp"]}, "The River shines under a lamp.",
     "The river shines under the moon."),
    ("keywords:forbidden_words", {"forbidden_words": ["lamp"]}, "Two lamps glow.", "One Lamp glows."),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": AT_LEAST}, "War is not warm.",
     "War is cold."),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": AT_LEAST},
     "A banana", "The sun"),
    ("language:response_language", {"language": "fr"}, "Bonjour, je suis un phare sur la mer.",
     "The lighthouse stands on the rocks above the sea."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First part.\n\nThen the second.", "First part.\n\nNext the second."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\nTwo.\n***\nThree.",
     "One.\n***\nTwo."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": LESS}, "One. Two.", "One. Two. Three."),
    ("length_constraints:number_words", {"num_words": 3, "relation": AT_LEAST}, "one two three", "one two"),
    ("punctuation:no_comma", {}, "No commas at all.", "Well, one comma."),
    ("startend:end_checker", {"end_phrase": "Thank you for reading."}, "Text.\nThank you for reading.",
     "Thank you for reading. Bye."),
    ("startend:quotation", {}, '"Wrapped in quotes."', 'Not "wrapped".'),
]


def test_all_25_ids_are_covered():
    assert len(INSTRUCTIONS) == 25
    assert {case[0] for case in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_follows_and_fails(instruction_id, kwargs, good, bad):
    assert check(instruction_id, kwargs, good)
    assert check_loose(instruction_id, kwargs, good)
    assert not check(instruction_id, kwargs, bad)


@pytest.mark.parametrize("instruction_id, kwargs", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_an_empty_answer_follows_nothing(instruction_id, kwargs):
    for empty in ("", "  \n "):
        assert not check(instruction_id, kwargs, empty)
        assert not check_loose(instruction_id, kwargs, empty)


@pytest.mark.parametrize("relation, threshold, expected", [(LESS, 2, False), (LESS, 3, True), (AT_LEAST, 2, True),
                                                            (AT_LEAST, 3, False)])
def test_relations_at_the_boundary(relation, threshold, expected):
    text = "Bright. Dark."  # 2 sentences, 2 words, 2 capital-free words, the letter "r" twice, "ark" once
    sentences = {"num_sentences": threshold, "relation": relation}
    assert check("length_constraints:number_sentences", sentences, text) is expected
    assert check("length_constraints:number_words", {"num_words": threshold, "relation": relation}, text) is expected
    assert check("keywords:letter_frequency", {"letter": "R", "let_frequency": threshold, "let_relation": relation},
                 text) is expected
    keyword = {"keyword": " r ", "frequency": threshold, "relation": relation}
    assert check("keywords:frequency", keyword, text) is expected
    capitals = "NASA and ESA"
    assert check("change_case:capital_word_frequency", {"capital_frequency": threshold, "capital_relation": relation},
                 capitals) is expected


def test_capital_words_split_contractions_and_punctuation_like_treebank():
    assert capital_words("I DON'T know") == 3  # I, DO, N'T
    assert capital_words("NASA's plan") == 1
    assert capital_words("AI-based WELL-KNOWN") == 1
    assert capital_words("US,UK and CANNOT.") == 4  # US, UK, CAN, NOT


def test_word_count_is_runs_of_word_characters():
    assert count_words("don't stop-motion 3.5 café") == 7  # don, t, stop, motion, 3, 5, café
    assert count_words("") == 0


@pytest.mark.parametrize("text, n", [
    ("", 0), ("   ", 0), ("No full stop here", 1), ("One. Two! Three? Four", 4), ("Ends with a stop.", 1),
    ('He said "hi." Then he left.', 2), ("Mr. Smith met Dr. Jones. They talked.", 2),
    ("Apples, pears, etc. The end.", 2), ("Use e.g. this one. Done.", 2), ("It is 3.14 roughly.", 1),
    ("Steps:\n1. Mix the flour.\n2. Bake it.", 4), ("Born in 2001. The year after.", 2),
    ("Wait... what happened? Wait... The end.", 3), ("* apples\n* pears\n* plums", 1),
    ("J. R. R. Tolkien wrote it.", 1),
    ("Great!! Next.", 2), ("Why?! Because.", 2),
])
def test_sentence_count_follows_punkt_rules(text, n):
    assert count_sentences(text) == n


def test_capital_and_lowercase_need_english():
    upper_french = "BONJOUR, JE SUIS UN PHARE SUR LA MER ET JE REGARDE LES BATEAUX."
    lower_french = "ceci est une réponse entièrement en français pour le test."
    assert not check("change_case:english_capital", {}, upper_french)  # langdetect (seeded): not English
    assert not check("change_case:english_lowercase", {}, lower_french)
    assert not check("change_case:english_capital", {}, "12345")  # no cased letter: not upper


def test_undetectable_language_counts_as_followed():
    assert check("language:response_language", {"language": "ja"}, "12345 !!!")


def test_missing_langdetect_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "langdetect", None)
    with pytest.raises(ConfigError, match="langdetect package: pip install langdetect"):
        check("language:response_language", {"language": "fr"}, "Bonjour")
    assert check("punctuation:no_comma", {}, "Bonjour")  # the other checks do not need it


def test_repeat_prompt_ignores_case_and_surrounding_whitespace():
    kwargs = {"prompt_to_repeat": "  Write a poem about rain. "}
    assert check("combination:repeat_prompt", kwargs, "\n WRITE A POEM ABOUT RAIN. Drops...")
    assert not check("combination:repeat_prompt", kwargs, "Write a poem about snow.")


def test_two_responses_edges():
    ok = "combination:two_responses"
    assert check(ok, {}, "******\nFirst.\n******\nSecond.\n******")  # empty pieces at the ends are fine
    assert not check(ok, {}, "First.\n******\n******\nSecond.")  # an empty one between them is not
    assert not check(ok, {}, "One.\n******\nTwo.\n******\nThree.")
    assert not check(ok, {}, "Only one answer.")


def test_postscript_markers():
    ps = "detectable_content:postscript"
    assert check(ps, {"postscript_marker": "P.S."}, "Text.\np. s. lower case and spaced")
    assert check(ps, {"postscript_marker": "P.P.S"}, "Text.\nP.P.S one more")
    assert not check(ps, {"postscript_marker": "P.P.S"}, "Text.\nP.S. only one")
    assert check(ps, {"postscript_marker": "P.P.S."}, "Text.\nP.P.S: a dot in the marker stands for any character")
    assert check(ps, {"postscript_marker": " Note: "}, "Text.\nNOTE: stripped marker, any case")


def test_json_format_fences_and_failures():
    js = "detectable_format:json_format"
    assert check(js, {}, '```json\n{"a": [1, 2]}\n```')
    assert check(js, {}, '```\n["x"]\n```')
    assert check(js, {}, "42")  # any JSON value
    assert not check(js, {}, '{"a": 1')


def test_sections_bullets_highlights_titles_and_placeholders():
    assert check("detectable_format:multiple_sections", {"section_spliter": "Part", "num_sections": 2},
                 "Part 1: sun. Part 2: rain. Part 3: snow.")  # at least
    assert not check("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**Bold line**\ntext")
    assert check("detectable_format:number_bullet_lists", {"num_bullets": 2}, "  * indented\n-dash")
    assert not check("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "*split\nacross lines*")
    assert not check("detectable_format:title", {}, "<<split\ntitle>>")
    assert check("detectable_content:number_placeholders", {"num_placeholders": 1}, "Empty [] counts")


def test_keyword_matching():
    assert check("keywords:existence", {"keywords": ["rain"]}, "Rainbows!")  # a substring, any case
    assert check("keywords:forbidden_words", {"forbidden_words": ["rain"]}, "Rainbows!")  # whole words only
    assert not check("keywords:forbidden_words", {"forbidden_words": ["rain", "snow"]}, "Snow, then sun.")
    assert check("keywords:frequency", {"keyword": "a.b", "frequency": 1, "relation": LESS}, "axb")  # literal
    assert check("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": AT_LEAST},
                 "#one #two")


def test_paragraphs():
    nth, paragraphs = "length_constraints:nth_paragraph_first_word", "length_constraints:number_paragraphs"
    kwargs = {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "Weekend"}
    assert check(nth, kwargs, "\"Weekend, at last.\n\nSecond.")  # quotes and punctuation around the word
    assert not check(nth, kwargs, "Weekend.\n\nTwo.\n\nThree.")  # wrong count
    assert not check(nth, {**kwargs, "nth_paragraph": 3}, "Weekend.\n\nTwo.")
    assert not check(nth, kwargs, "\n\nWeekend.\n\nTwo.")  # IFEval indexes the pieces, blank ones included
    assert check(paragraphs, {"num_paragraphs": 2}, "***\nOne.\n***\nTwo.")  # empty before the first divider
    assert not check(paragraphs, {"num_paragraphs": 2}, "One.\n***\n***\nTwo.")


def test_end_and_quotation():
    end = {"end_phrase": "Any more questions?"}
    assert check("startend:end_checker", end, '"Text. ANY MORE QUESTIONS?"\n')
    assert not check("startend:quotation", {}, '"')
    assert check("startend:quotation", {}, '  "x"  \n')


@pytest.mark.parametrize("instruction_id, kwargs, answer", [
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}'),  # first line removed
    ("detectable_format:json_format", {}, '{"a": 1}\nHope this helps.'),  # last line removed
    ("startend:quotation", {}, 'Intro:\n"quoted"\nOutro.'),  # both removed
    ("startend:end_checker", {"end_phrase": "Thank you for reading."}, "Text. **Thank you for reading.**"),  # * removed
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "**Write a poem.**\nRain falls."),
    ("change_case:english_lowercase", {}, "Title Line\nthis is the whole answer about the sea and the sky."),
])
def test_loose_only_passes(instruction_id, kwargs, answer):
    assert check_loose(instruction_id, kwargs, answer)
    assert not check(instruction_id, kwargs, answer)


def test_kwargs_nulls_ignored_and_errors_name_the_field():
    ifeval_row = {"num_words": 3, "relation": AT_LEAST, "keywords": None, "language": None, "num_bullets": None}
    assert check("length_constraints:number_words", ifeval_row, "one two three")
    bad = [({"relation": AT_LEAST}, r"kwargs\.num_words: missing"),
           ({"num_words": "ten", "relation": AT_LEAST}, r"num_words: expected a whole number"),
           ({"num_words": True, "relation": AT_LEAST}, r"num_words: expected a whole number"),
           ({"num_words": -1, "relation": AT_LEAST}, r"num_words: expected a whole number >= 0"),
           ({"num_words": 3, "relation": "more than"}, r"relation: expected \"less than\" or \"at least\""),
           ({"num_words": 3, "relation": AT_LEAST, "keywords": ["x"]}, r"keywords: not an argument")]
    for kwargs, message in bad:
        with pytest.raises(DataError, match=message):
            check("length_constraints:number_words", kwargs, "one two three")
    with pytest.raises(DataError, match="letter: expected one character"):
        check("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": LESS}, "x")
    with pytest.raises(DataError, match="keywords: expected a non-empty list"):
        check("keywords:existence", {"keywords": "river"}, "river")
    with pytest.raises(DataError, match="unknown instruction id 'nope:nothing'"):
        check("nope:nothing", {}, "x")
