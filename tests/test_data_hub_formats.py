"""Preference data as the hubs ship it: HH-RLHF transcripts, UltraFeedback-binarized, Parquet files and
Arrow folders give the same pairs and token ids as the prompt format for the same conversations;
chat_template none encodes raw prompt + answer + EOS as TRL does for string data; a prompt that is
already templated is not templated twice; errors name file, record and field; `data inspect` shows the
template and fails when no pair is left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from minidpo.cli import main
from minidpo.config import RunConfig, validate
from minidpo.data import iter_pairs, load_preference_data
from minidpo.errors import ConfigError, DataError

DATA = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA / "expected_pairs.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load(path, tok, **kw):
    kw.setdefault("max_length", 512)
    return load_preference_data(path, tok, cache_dir=None, log=None, **kw)


def records(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A hub-style Parquet shard and a `datasets.save_to_disk` folder of the UltraFeedback fixture."""
    import datasets  # heavy to import (the dev extra): only the tests that write shards need it

    root = tmp_path_factory.mktemp("shards")
    ds = datasets.Dataset.from_list(records("ultrafeedback.jsonl"))
    parquet = root / "data" / "train_prefs-00000-of-00001.parquet"
    parquet.parent.mkdir()
    ds.to_parquet(str(parquet))
    arrow = root / "saved"
    ds.save_to_disk(str(arrow))
    assert (arrow / "state.json").is_file() and list(arrow.glob("*.arrow"))
    return {"parquet": parquet, "parquet_folder": parquet.parent, "arrow_folder": arrow}


def new_layouts(shards):
    """name -> (path, detected format, indices into EXPECTED)."""
    return {"hh.jsonl": (DATA / "hh.jsonl", "hh", [1, 2]),
            "ultrafeedback.jsonl": (DATA / "ultrafeedback.jsonl", "ultrafeedback", [0, 1, 2]),
            "parquet": (shards["parquet"], "ultrafeedback", [0, 1, 2]),
            "parquet_folder": (shards["parquet_folder"], "ultrafeedback", [0, 1, 2]),
            "arrow_folder": (shards["arrow_folder"], "ultrafeedback", [0, 1, 2])}


@pytest.mark.parametrize("name", ["hh.jsonl", "ultrafeedback.jsonl", "parquet", "parquet_folder", "arrow_folder"])
def test_new_layouts_parse_to_the_same_pairs(name, shards):
    path, fmt, idx = new_layouts(shards)[name]
    got = list(iter_pairs(path))
    assert [f for _, f, _ in got] == [fmt] * len(idx)
    for (_, _, pair), i in zip(got, idx):
        assert not isinstance(pair, DataError), pair
        assert (pair.prompt_messages, pair.chosen, pair.rejected) == (
            EXPECTED[i]["prompt_messages"], EXPECTED[i]["chosen"], EXPECTED[i]["rejected"])


@pytest.mark.parametrize("name", ["hh.jsonl", "ultrafeedback.jsonl", "parquet", "parquet_folder", "arrow_folder"])
def test_new_layouts_give_the_token_ids_of_the_prompt_format(name, shards, tok):
    """Same conversation, same ids: against MiniMind's DPO tutorial format {"prompt", "chosen", "rejected"} for
    the one-turn pairs, and TRL's conversational form for the others (that format has no multi-turn prompts)."""
    path, _, idx = new_layouts(shards)[name]
    ours = load(path, tok)
    prompt_pairs = load(DATA / "prompt.jsonl", tok)  # EXPECTED[0] and EXPECTED[2]
    trl = load(DATA / "trl.jsonl", tok)  # EXPECTED[0..2]
    reference = {0: prompt_pairs[0], 1: trl[1], 2: prompt_pairs[1]}
    assert len(ours) == len(idx)
    for pair, i in zip(ours, idx):
        assert pair == reference[i]
    assert ours.stats.raw_pairs == 0


def test_hh_prompt_ends_at_the_last_assistant_turn_not_the_common_prefix():
    (_, _, multi), (_, _, pair) = iter_pairs(DATA / "hh.jsonl")
    # both answers start with "12 + 7 = ": a longest-common-prefix split would have eaten it
    assert (pair.chosen, pair.rejected) == ("12 + 7 = 19.", "12 + 7 = 21.")
    assert pair.raw == ("\n\nHuman: Compute:\n12 + 7\n\nAssistant:", " 12 + 7 = 19.", " 12 + 7 = 21.")
    assert [m["role"] for m in multi.prompt_messages] == ["user", "assistant", "user"]


def test_raw_template_is_prompt_plus_answer_plus_eos(tok, tmp_path):
    """chat_template none: TRL's string data, ids of tok(prompt) and of tok(prompt + answer) after them, EOS."""
    rows = [{"prompt": "Question: what is 12 + 7?\nAnswer:", "chosen": " 19.", "rejected": " 21."}]
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text((DATA / "hh.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    ds = load(tmp_path, tok, chat_template="none")  # a folder: the prompt format, then HH transcripts
    assert ds.stats.raw_pairs == 3 and ds.stats.template.startswith("none")
    prompts = [rows[0]["prompt"], "\n\nHuman: What is photosynthesis?\n\nAssistant: Plants turn light into chemical "
               "energy.\n\nHuman: Say it in Chinese.\n\nAssistant:", "\n\nHuman: Compute:\n12 + 7\n\nAssistant:"]
    answers = [(" 19.", " 21."), (" 光合作用是植物利用光能的过程。", " 我不能帮助你。"), (" 12 + 7 = 19.", " 12 + 7 = 21.")]
    for pair, prompt, (chosen, rejected) in zip(ds, prompts, answers):
        p = tok(prompt)["input_ids"]
        assert pair.prompt_ids == p
        assert pair.chosen_ids == tok(prompt + chosen)["input_ids"][len(p):] + [tok.eos_token_id]
        assert pair.rejected_ids == tok(prompt + rejected)["input_ids"][len(p):] + [tok.eos_token_id]
        assert "<|im_start|>" not in tok.decode(pair.prompt_ids)  # no chat template anywhere


def test_a_templated_prompt_is_not_templated_twice(tok, tmp_path):
    f = tmp_path / "templated.jsonl"
    f.write_text(json.dumps({"prompt": "<|im_start|>user\nCompute:\n12 + 7<|im_end|>\n<|im_start|>assistant\n",
                             "chosen": "12 + 7 = 19.", "rejected": "12 + 7 = 21."}) + "\n", encoding="utf-8")
    ds = load(f, tok)
    assert ds.stats.raw_pairs == 1 and "'<|im_start|>'" in ds.stats.template
    assert ds[0] == load(DATA / "prompt.jsonl", tok)[1]  # the same ids as the plain prompt, templated once


def test_raw_template_refuses_message_data_by_record(tok):
    with pytest.raises(DataError, match=r"trl.jsonl:1: chat_template none needs string data"):
        load(DATA / "trl.jsonl", tok, chat_template="none")
    with pytest.raises(DataError, match="no usable preference pairs"):
        load(DATA / "trl.jsonl", tok, chat_template="none", on_bad_record="skip")


def test_errors_name_file_record_and_field(tmp_path):
    import datasets  # as in shards()

    def first_error(path, **kw):
        return next(str(p) for _, _, p in iter_pairs(path, **kw) if isinstance(p, DataError))

    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
                              "rejected": "\n\nHuman: Hey\n\nAssistant: Hello."}) + "\n")
    assert first_error(hh) == ('hh.jsonl:1: field "rejected": does not share chosen\'s transcript up to its last '
                               "'\\n\\nAssistant:'")
    uf = records("ultrafeedback.jsonl")[2]
    uf["prompt"] = "Something else"
    (tmp_path / "uf.jsonl").write_text(json.dumps(uf) + "\n")
    assert first_error(tmp_path / "uf.jsonl").startswith('uf.jsonl:1: field "prompt": differs from the last user turn')
    rows = records("ultrafeedback.jsonl")
    rows[1]["rejected"] = None
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    assert first_error(tmp_path / "bad.parquet").startswith('bad.parquet:record 2: field "rejected": missing')
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"^junk.parquet: not a readable Parquet file"):
        list(iter_pairs(tmp_path / "junk.parquet"))
    splits = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:1]),
                                   "test_prefs": datasets.Dataset.from_list(rows[:1])})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"a saved DatasetDict\? pass one split's folder: test_prefs, train_prefs"):
        list(iter_pairs(tmp_path / "dict"))


def test_inspect_shows_format_and_template_and_fails_without_pairs(tiny_model_dir, tmp_path, capsys):
    assert main(["data", "inspect", str(DATA / "hh.jsonl"), "--model", tiny_model_dir, "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "format:   hh" in out and "template: the tokenizer's chat template" in out
    assert main(["data", "inspect", str(DATA / "hh.jsonl"), "--model", tiny_model_dir, "--chat_template", "none",
                 "--color", "never", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "template: none (raw prompt + answer + EOS)" in out
    assert "[[\n\nHuman: Compute:\n12 + 7\n\nAssistant:]] 12 + 7 = 19.<|im_end|>" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": 5, "rejected": "b"}\n')
    for extra in ([], ["--model", tiny_model_dir]):
        assert main(["data", "inspect", str(bad), *extra]) == 1
        captured = capsys.readouterr()
        assert "0 " in captured.out and "no valid preference pair left" in captured.err


def test_chat_template_setting_is_checked(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="--chat_template raw: choose one of auto, none"):
        validate(RunConfig(model=str(tmp_path), data=str(tmp_path), chat_template="raw", output_dir=str(tmp_path / "o")))
