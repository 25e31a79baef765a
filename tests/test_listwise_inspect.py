"""`data inspect` of a listwise file counts lists and their K answers where a pair file counts pairs, with
a tokenizer and without one (characters)."""

from __future__ import annotations

from minidpo.data.inspect import inspect_report
from minidpo.data.listwise import count_lists

from test_listwise import _write


def test_count_lists_names_lists_and_their_answers():
    assert count_lists([3, 4, 3]) == "3 lists of 3-4 answers (10 answers)"
    assert count_lists([4, 4]) == "2 lists of 4 answers (8 answers)"


def test_inspect_counts_lists_and_answers_for_listwise_data_and_pairs_for_pairs(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lists = _write(tmp_path, [
        {"prompt": "Q", "responses": ["a", "bb", "a very long answer " * 20], "scores": [1, 2, 0]},
        {"prompt": "R", "responses": ["x", "y"], "ranking": [1, 0]},
        {"prompt": "S", "responses": ["only one"], "scores": [1]},  # skipped: K < 2
    ])
    report, n = inspect_report(lists, tok, max_length=48)
    assert n == 2
    assert "records:  3 read, 2 lists of 2-3 answers (5 answers) kept" in report
    assert "truncated: 1 lists (0 prompts kept their end, 1 with a response cut)" in report
    assert " pairs" not in report  # nothing of a listwise file is counted in pairs
    text, n = inspect_report(lists, None)
    assert n == 2 and "records:  3 read, 2 lists of 2-3 answers (5 answers) valid" in text and " pairs" not in text

    pairs = _write(tmp_path, [{"prompt": "Q", "chosen": "a", "rejected": "b"}], "pairs.jsonl")
    report, _ = inspect_report(pairs, tok, max_length=48)
    assert "records:  1 read, 1 pairs kept" in report and "truncated: 0 pairs" in report
    assert "records:  1 read, 1 valid pairs" in inspect_report(pairs, None)[0]
