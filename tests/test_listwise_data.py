"""UltraFeedback's raw form with ratings (openbmb/UltraFeedback) read as listwise records: each completion
scored by the mean of its aspect ratings ("N/A" left out) or, as data_format ultrafeedback_overall, by its
overall_score; unrated completions left out; K differing per record; ties; malformed fields as one-line
file:line:field errors; and what `data inspect` shows of them."""

from __future__ import annotations

import json

import pytest

from minidpo.data import detect_format
from minidpo.data.formats import iter_pairs
from minidpo.errors import DataError

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def completion(response, ratings, overall=None, **extra):
    """One UltraFeedback completion: `ratings` the four aspects' "Rating"s in ASPECTS order."""
    annotations = {a: {"Rating": r, "Rationale": "..."} for a, r in zip(ASPECTS, ratings)}
    annotations["truthfulness"]["Type"] = ["0"]
    c = {"model": "some-model", "principle": "helpfulness", "custom_system_prompt": "Be helpful.",
         "response": response, "annotations": annotations, "critique": "...", "fine-grained_score": 0.0}
    if overall is not None:
        c["overall_score"] = overall
    return c | extra


def record(instruction, *completions):
    return {"source": "evol_instruct", "instruction": instruction, "models": ["a", "b"],
            "completions": list(completions)}


def _write(tmp_path, records, name="uf.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _lists(path, data_format="auto"):
    out = []
    for _, fmt, p in iter_pairs(path, data_format):
        if isinstance(p, DataError):
            raise p
        out.append((fmt, p))
    return out


def test_scores_are_the_mean_of_the_aspect_ratings_without_na_and_k_may_differ(tmp_path):
    path = _write(tmp_path, [
        record("What is 12 + 7?",
               completion("19.", ["5", "5", "4", "5"], 7.5),
               completion("21.", ["1", "N/A", "2", "1"], 10.0),  # overall_score 10: UltraFeedback's critique bug
               completion("About 20.", ["3", "3", "N/A", "N/A"], 6.0)),
        record("Name a prime.",
               completion("4", ["1", "1", "1", "1"]),
               completion("7", ["4", "5", "5", "4"]),
               completion("2", ["5", "4", "4", "5"]),  # the same mean as "7": a tie, the earlier ranks higher
               completion("9", [2, 2, 2, 2])),  # numbers as well as strings
    ])
    (fmt_a, a), (fmt_b, b) = _lists(path)
    assert fmt_a == fmt_b == "ultrafeedback_ratings"
    assert a.prompt_messages == [{"role": "user", "content": "What is 12 + 7?"}]
    assert [m["content"] for m in a.responses] == ["19.", "21.", "About 20."]
    assert a.scores == pytest.approx(((5 + 5 + 4 + 5) / 4, (1 + 2 + 1) / 3, (3 + 3) / 2))
    assert (a.chosen, a.rejected) == ("19.", "21.")
    assert len(b.responses) == 4 and b.scores == (1.0, 4.5, 4.5, 2.0)
    assert (b.chosen, b.rejected) == ("7", "4")


def test_overall_score_on_request(tmp_path):
    path = _write(tmp_path, [record("Q", completion("a", ["5"] * 4, 7.5), completion("b", ["1"] * 4, 10),
                                    completion("c", ["3"] * 4))])  # no overall_score: left out
    ((fmt, p),) = _lists(path, "ultrafeedback_overall")
    assert fmt == "ultrafeedback_overall"
    assert [m["content"] for m in p.responses] == ["a", "b"] and p.scores == (7.5, 10.0)
    assert (p.chosen, p.rejected) == ("b", "a")


def test_a_completion_without_a_usable_rating_is_left_out_and_fewer_than_two_is_an_error(tmp_path):
    unrated = completion("no rating", ["N/A"] * 4)
    no_aspects = completion("none of the four", ["5"] * 4)
    no_aspects["annotations"] = {"style": {"Rating": "5"}}
    path = _write(tmp_path, [record("Q", completion("a", ["4"] * 4), unrated, no_aspects, completion("b", ["2"] * 4))])
    ((_, p),) = _lists(path)
    assert [m["content"] for m in p.responses] == ["a", "b"] and p.scores == (4.0, 2.0)

    path = _write(tmp_path, [record("Q", completion("a", ["4"] * 4), completion("b", ["2"] * 4)),
                             record("R", completion("a", ["4"] * 4), unrated)])
    with pytest.raises(DataError) as e:
        _lists(path)
    message = str(e.value)
    assert message.startswith('uf.jsonl:2: field "completions": 1 of 2 completions have a rating in annotations')
    assert "at least 2" in message and "\n" not in message
    assert e.value.reason == "too few answers"


def test_detection_from_the_keys():
    assert detect_format(record("Q", completion("a", ["4"] * 4))) == "ultrafeedback_ratings"
    assert detect_format({"instruction": "Q", "completions": []}) == "ultrafeedback_ratings"  # then: too few answers
    assert detect_format({"completions": [{"response": "a"}]}) == "ultrafeedback_ratings"  # no instruction: its error
    assert detect_format({"instruction": "Q", "chosen": "a", "rejected": "b"}) == "alpaca"


def _bad(field, value):
    """A record with one completion's field replaced (`field` a path into completion 1)."""
    good = record("Q", completion("a", ["4"] * 4, 6.0), completion("b", ["2"] * 4, 3.0))
    target = good["completions"][1]
    *parents, last = field.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    return good


@pytest.mark.parametrize("bad, data_format, field, words", [
    (_bad("annotations", None), "auto", "completions[1].annotations", "expected an object of aspect ratings"),
    (_bad("annotations", ["5"]), "auto", "completions[1].annotations", "got list"),
    (_bad("annotations.honesty", "5"), "auto", "completions[1].annotations.honesty", 'expected {"Rating"'),
    (_bad("annotations.honesty", {"Rationale": "no rating"}), "auto", "completions[1].annotations.honesty",
     'expected {"Rating"'),
    (_bad("annotations.honesty.Rating", "6"), "auto", "completions[1].annotations.honesty.Rating",
     "expected \"1\"..\"5\" or \"N/A\", got '6'"),
    (_bad("annotations.honesty.Rating", "high"), "auto", "completions[1].annotations.honesty.Rating", "'high'"),
    (_bad("annotations.honesty.Rating", True), "auto", "completions[1].annotations.honesty.Rating", "True"),
    (_bad("response", ""), "auto", "completions[1].response", "empty"),
    (_bad("response", None), "auto", "completions[1].response", "got null"),
    (_bad("overall_score", "8"), "ultrafeedback_overall", "completions[1].overall_score", "finite number"),
    (_bad("overall_score", False), "ultrafeedback_overall", "completions[1].overall_score", "finite number"),
    ({"instruction": "Q", "completions": [completion("a", ["4"] * 4), "b"]}, "auto", "completions[1]",
     "expected a completion object, got string"),
    ({"instruction": "", "completions": [completion("a", ["4"] * 4), completion("b", ["1"] * 4)]}, "auto",
     "instruction", "empty"),
    ({"completions": [completion("a", ["4"] * 4), completion("b", ["1"] * 4)]}, "auto", "instruction", "missing"),
    ({"instruction": "Q", "completions": "a, b"}, "auto", "completions", "expected a list"),
])
def test_malformed_fields_name_file_line_and_field(tmp_path, bad, data_format, field, words):
    good = record("Q0", completion("a", ["4"] * 4, 6.0), completion("b", ["2"] * 4, 3.0))
    path = _write(tmp_path, [good, bad])
    with pytest.raises(DataError) as e:
        _lists(path, data_format)
    message = str(e.value)
    assert message.startswith(f'uf.jsonl:2: field "{field}":'), message
    assert words in message and "\n" not in message


def test_inspect_without_a_model_shows_the_list_with_its_scores(tmp_path):
    from minidpo.data.inspect import inspect_report

    path = _write(tmp_path, [record("What is 12 + 7?", completion("19.", ["5", "5", "4", "5"]),
                                    completion("21.", ["1", "N/A", "2", "1"]))])
    report, n = inspect_report(path, color=False)
    assert n == 1 and "format:   ultrafeedback_ratings" in report
    assert "list 0 (uf.jsonl:1): 2 answers with their scores" in report
    assert "--- answer 0 (score 4.75) ---\n[[User: What is 12 + 7?\n\nAssistant: ]]19.<EOS>" in report
    assert "--- answer 1 (score 1.33333) ---" in report
    assert "  answer " in report  # the answers' character lengths


def test_loaded_as_lists_and_shown_with_a_tokenizer(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from minidpo.data import load_preference_data
    from minidpo.data.inspect import inspect_report
    from minidpo.data.listwise import TokenizedList

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = _write(tmp_path, [
        record("Q", completion("a", ["4"] * 4), completion("bb", ["5", "N/A", "5", "4"]), completion("c", ["1"] * 4)),
        record("R", completion("x", ["3"] * 4), completion("y", ["N/A"] * 4), completion("z", ["3"] * 4)),
    ])
    ds = load_preference_data(path, tok, max_length=64, cache_dir=None, log=None)
    assert [type(r) for r in ds] == [TokenizedList, TokenizedList]
    assert ds[0].scores == [4.0, pytest.approx(14 / 3), 1.0] and ds[1].scores == [3.0, 3.0]  # "y" left out
    assert len(ds[1].answer_ids) == 2 and ds.stats.format == "ultrafeedback_ratings"
    assert ds.stats.summary().startswith("2 lists kept of 2 records read")  # the load's log line
    report, n = inspect_report(path, tok, color=False)
    assert n == 2 and "format:   ultrafeedback_ratings" in report and "3 answers in one row" in report
    assert f"--- answer 1 (score {14 / 3:g}, " in report
