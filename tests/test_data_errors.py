"""Bad input: each problem is a DataError (a ValueError) naming file, line and field; skip mode counts it.
A tokenizer that cannot encode the data is one ModelError line naming its folder."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from minidpo.cli import main
from minidpo.data import ChatEncoder, iter_pairs, load_preference_data
from minidpo.errors import DataError, ModelError
from minidpo.models import load_tokenizer
from minidpo.tokenizer import CHATML_TEMPLATE

GOOD = {"prompt": "What is photosynthesis?", "chosen": "Plants turn light into energy.", "rejected": "No idea."}


def _sharegpt(role):
    return {"conversations": [{"from": role, "value": "hi"}], "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"}}


# (bad line, expected message after "pairs.jsonl:2: ", reason)
CASES = {
    "malformed JSON": ('{"prompt": "a", "chosen": ', r"malformed JSON \(Expecting value at column 27\)", "malformed JSON"),
    "missing field": (json.dumps({"prompt": "a", "chosen": "b"}),
                      r'field "rejected": missing \(expected a non-empty string', "missing field"),
    "empty field": (json.dumps({"prompt": " ", "chosen": "b", "rejected": "c"}),
                    r'field "prompt": expected a non-empty string, got an empty one', "empty field"),
    "wrong type": (json.dumps({"prompt": "a", "chosen": 17, "rejected": "c"}),
                   r'field "chosen": expected a non-empty string, got int', "wrong type"),
    "identical": (json.dumps({"prompt": "a", "chosen": "same", "rejected": "same"}),
                  r'field "rejected": identical to chosen', "chosen identical to rejected"),
    "not an object": ("[1, 2]", r"expected a JSON object, got list", "wrong type"),
}


def _write(tmp_path, lines, name="pairs.jsonl"):
    f = tmp_path / name
    f.write_text("".join(line + "\n" for line in lines))
    return f


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_message_names_file_line_field(case, tmp_path):
    line, msg, reason = CASES[case]
    f = _write(tmp_path, [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DataError, match=r"^pairs\.jsonl:2: " + msg) as e:
        load_preference_data(f, tokenizer=None, max_length=64, cache_dir=None, log=None)
    assert isinstance(e.value, ValueError) and e.value.reason == reason


@pytest.mark.parametrize("record, field, message", [
    (_sharegpt("bot"), "conversations[0].from", "unknown role 'bot'"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "robot", "content": "b"}]},
     "rejected[1].role", "unknown role 'robot'"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": 3}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen[0].content", "expected a non-empty string, got int"),
    ({"instruction": "q", "chosen": "a", "rejected": "b", "history": [["only one"]]}, "history[0]",
     "expected a [user, assistant] pair"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "rejected",
     "identical to chosen"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
     "prompt", "the prompt must end with a user turn"),
])
def test_structured_formats_name_nested_fields(record, field, message, tmp_path):
    f = _write(tmp_path, [json.dumps(record)], "conv.jsonl")
    (_, _, err), = iter_pairs(f)
    assert isinstance(err, DataError)
    assert str(err).startswith(f'conv.jsonl:1: field "{field}": {message}'), str(err)
    assert (err.reason == "unknown role") == ("unknown role" in message)


def test_empty_file_and_empty_array_and_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"^empty\.jsonl: the file is empty"):
        list(iter_pairs(_write(tmp_path, ["", "  "], "empty.jsonl")))
    (tmp_path / "arr.json").write_text("[]")
    with pytest.raises(DataError, match=r"^arr\.json: no records"):
        list(iter_pairs(tmp_path / "arr.json"))
    with pytest.raises(DataError, match="no such file or folder"):
        list(iter_pairs(tmp_path / "missing.jsonl"))


def test_json_array_errors_give_line_numbers(tmp_path):
    f = tmp_path / "pairs.json"
    f.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a", "chosen": ""}\n]\n')
    (_, _, ok), (_, _, err) = iter_pairs(f)
    assert ok.source == "pairs.json:2"
    assert str(err).startswith('pairs.json:3: field "chosen": expected a non-empty string, got an empty one')
    f.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a" "chosen": "b"}\n]\n')
    with pytest.raises(DataError, match=r"^pairs\.json:3: malformed JSON"):
        list(iter_pairs(f))


def test_unknown_format_and_bad_override(tmp_path):
    f = _write(tmp_path, [json.dumps({"question": "q", "answer": "a"})])
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: cannot tell the data format from the keys \['answer', 'question'\]"):
        load_preference_data(f, None, max_length=64, cache_dir=None, log=None)
    with pytest.raises(ValueError, match="unknown data_format 'csv'"):
        load_preference_data(f, None, max_length=64, data_format="csv", cache_dir=None, log=None)
    g = _write(tmp_path, [json.dumps(GOOD)], "g.jsonl")
    with pytest.raises(DataError, match=r'g\.jsonl:1: field "conversations": missing'):
        load_preference_data(g, None, max_length=64, data_format="sharegpt", cache_dir=None, log=None)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_skip_counts_by_reason_and_max_bad_fraction(tok, tmp_path):
    bad = [CASES["malformed JSON"][0], CASES["wrong type"][0], CASES["wrong type"][0], CASES["identical"][0]]
    f = _write(tmp_path, [json.dumps(GOOD)] * 16 + bad)  # 4 bad of 20 = 20%
    with pytest.raises(DataError, match=r"4 of 20 records \(20%\) were skipped or dropped, more than max_bad_fraction=0\.1"):
        load_preference_data(f, tok, max_length=256, on_bad_record="skip", cache_dir=None, log=None)
    logs = []
    ds = load_preference_data(f, tok, max_length=256, on_bad_record="skip", max_bad_fraction=0.25,
                              cache_dir=None, log=logs.append)
    assert len(ds) == 16 and ds.stats.read == 20
    assert ds.stats.skipped == {"malformed JSON": 1, "wrong type": 2, "chosen identical to rejected": 1}
    assert ds.stats.examples["wrong type"].startswith("pairs.jsonl:18: field \"chosen\"")
    assert "4 skipped (chosen identical to rejected: 1, malformed JSON: 1, wrong type: 2)" in logs[0]
    with pytest.raises(DataError, match=r"^pairs\.jsonl:17: malformed JSON"):  # the default is to stop
        load_preference_data(f, tok, max_length=256, cache_dir=None, log=None)


def test_all_bad_raises_even_with_max_bad_fraction_one(tok, tmp_path):
    f = _write(tmp_path, [CASES["wrong type"][0]])
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_preference_data(f, tok, max_length=256, on_bad_record="skip", max_bad_fraction=1.0,
                             cache_dir=None, log=None)


def test_jsonl_lines_split_only_on_newline_and_non_utf8(tmp_path):
    rec = {"prompt": "a\u2028b\x85c", "chosen": "x\u2029y", "rejected": "z\r"}
    f = tmp_path / "u.jsonl"
    f.write_text(json.dumps(rec, ensure_ascii=False) + "\r\n" + json.dumps(GOOD) + "\r\n", encoding="utf-8")
    (_, _, a), (_, _, b) = iter_pairs(f)
    assert a.prompt_messages[0]["content"] == "a\u2028b\x85c" and a.chosen == "x\u2029y"
    assert b.source == "u.jsonl:2"
    g = tmp_path / "latin1.jsonl"
    g.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"^latin1\.jsonl:2: not UTF-8 text"):
        list(iter_pairs(g))


def test_empty_system_message_is_left_out_and_role_must_be_a_string(tmp_path):
    rec = {"prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "q"}],
           "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    bad = {"conversations": [{"from": ["human"], "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
           "rejected": {"from": "gpt", "value": "b"}}
    f = _write(tmp_path, [json.dumps(rec)], "a.jsonl")
    g = _write(tmp_path, [json.dumps(bad)], "b.jsonl")
    (_, _, p), = iter_pairs(f)
    assert p.prompt_messages == [{"role": "user", "content": "q"}]
    (_, _, e), = iter_pairs(g)
    assert str(e) == 'b.jsonl:1: field "conversations[0].from": expected a role string, got list'


def test_json_layouts_minified_wrapped_and_single_object(tmp_path):
    f = tmp_path / "min.json"
    f.write_text(json.dumps([GOOD, GOOD, dict(GOOD, chosen=1)]))
    sources = [rec.source for rec, _, _ in iter_pairs(f)]
    assert sources == ["min.json:1", "min.json:1, record 2", "min.json:1, record 3"]
    (_, _, err), = [x for x in iter_pairs(f) if isinstance(x[2], DataError)]
    assert str(err).startswith('min.json:1, record 3: field "chosen"')
    w = tmp_path / "wrapped.json"
    w.write_text('{"train": [\n  ' + json.dumps(GOOD) + ",\n  " + json.dumps(dict(GOOD, rejected=[])) + "\n]}\n")
    assert [str(x[2]) if isinstance(x[2], DataError) else x[0].source for x in iter_pairs(w)] == [
        "wrapped.json:2", 'wrapped.json:3: field "rejected": expected a non-empty string, got list']
    one = tmp_path / "one.json"
    one.write_text(json.dumps(GOOD, indent=2))
    (rec, fmt, pair), = iter_pairs(one)
    assert (rec.source, fmt, pair.chosen) == ("one.json:1", "prompt", GOOD["chosen"])


@pytest.fixture
def word_level_dir(tmp_path):
    """A WordLevel vocabulary without an unknown token: it encodes its own words only (not "hi")."""
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "yes", "no"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML_TEMPLATE
    folder = tmp_path / "word-level"
    tok.save_pretrained(folder)
    return str(folder)


def test_a_tokenizer_that_cannot_encode_the_data_is_one_line(word_level_dir, tmp_path, capsys):
    tok = load_tokenizer(word_level_dir)
    for mode in ("auto", "none"):  # the template probe needs no word of the vocabulary
        assert ChatEncoder(tok, mode).eos_id == tok.convert_tokens_to_ids("<|im_end|>")
    enc = ChatEncoder(tok)
    assert enc.end_id == tok.eos_token_id and enc.marker == "<|im_start|>"
    answer = enc.encode_prompt_response([{"role": "user", "content": "hello"}], "yes")[1]
    assert answer == tok.convert_tokens_to_ids(["yes", "<|im_end|>"])
    with pytest.raises(ModelError) as e:
        enc.encode_prompt_response([{"role": "user", "content": "hi"}], "yes")
    assert str(e.value).startswith(f"{word_level_dir}: its tokenizer cannot encode ")
    assert "Missing [UNK] token" in str(e.value) and "\n" not in str(e.value)

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"prompt": "hello", "chosen": "yes", "rejected": "no"}) + "\n")
    bad.write_text(json.dumps({"prompt": "hi there", "chosen": "yes", "rejected": "no"}) + "\n")
    assert main(["data", "inspect", str(good), "--model", word_level_dir, "--color", "never"]) == 0
    assert "1 pairs kept" in capsys.readouterr().out
    for mode in ("auto", "none"):
        assert main(["data", "inspect", str(bad), "--model", word_level_dir, "--chat_template", mode]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"{word_level_dir}: its tokenizer cannot encode the text of bad.jsonl:1" in err
        assert "Missing [UNK] token" in err and "Traceback" not in err
