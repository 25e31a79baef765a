"""Chat-template tokenization, response-only masks, the same conversation in every format, truncation, cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from minidpo.data import (
    ChatEncoder,
    PreferencePair,
    TokenizedPair,
    collate_pairs,
    encode_prompt_response,
    iter_pairs,
    load_preference_data,
    truncate_pair,
)
from minidpo.errors import DataError
from minidpo.tokenizer import CHATML_TEMPLATE

DATA = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA / "expected_pairs.json").read_text(encoding="utf-8"))
# file -> (detected format, indices into EXPECTED it holds)
FIXTURES = {
    "prompt.jsonl": ("prompt", [0, 2]),
    "prompt.json": ("prompt", [0, 2]),
    "minimind.jsonl": ("messages", [0, 1, 2]),
    "trl_implicit.json": ("messages", [0, 1, 2]),
    "trl.jsonl": ("trl", [0, 1, 2]),
    "sharegpt.json": ("sharegpt", [0, 1, 2]),
    "alpaca.jsonl": ("alpaca", [0, 1, 2]),
}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load(path, tok, **kw):
    kw.setdefault("max_length", 512)
    kw.setdefault("cache_dir", None)
    kw.setdefault("log", None)
    return load_preference_data(path, tok, **kw)


def chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_format_parses_to_the_same_pairs(name):
    fmt, idx = FIXTURES[name]
    got = [(f, p) for _, f, p in iter_pairs(DATA / name)]
    assert [f for f, _ in got] == [fmt] * len(idx)
    for (_, p), i in zip(got, idx):
        assert isinstance(p, PreferencePair), p
        assert p.prompt_messages == EXPECTED[i]["prompt_messages"]
        assert (p.chosen, p.rejected) == (EXPECTED[i]["chosen"], EXPECTED[i]["rejected"])
        assert p.source.startswith(name + ":")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_format_gives_identical_token_ids_and_masks(name, tok):
    _, idx = FIXTURES[name]
    reference = load(DATA / "minimind.jsonl", tok)
    ds = load(DATA / name, tok)
    assert len(ds) == len(idx)
    for pair, i in zip(ds, idx):
        assert pair == reference[i]
    b, ref_b = collate_pairs(list(ds), tok.pad_token_id), collate_pairs([reference[i] for i in idx], tok.pad_token_id)
    for k in b:
        assert b[k].tolist() == ref_b[k].tolist()


def test_prompt_and_response_ids_follow_the_chat_template_token_by_token(tok):
    ds = load(DATA / "minimind.jsonl", tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for pair, exp in zip(ds, EXPECTED):
        prompt_text = chatml(exp["prompt_messages"]) + "<|im_start|>assistant\n"
        assert tok.decode(pair.prompt_ids) == prompt_text
        assert pair.prompt_ids == tok(prompt_text, add_special_tokens=False)["input_ids"]
        for ids, text in ((pair.chosen_ids, exp["chosen"]), (pair.rejected_ids, exp["rejected"])):
            assert ids[-1] == eos and ids.count(eos) == 1  # end-of-turn exactly once, trailing "\n" not trained
            assert tok.decode(ids) == text + "<|im_end|>"
            # the whole sequence is the chat template's text of the conversation, minus the final newline
            full = chatml(exp["prompt_messages"] + [{"role": "assistant", "content": text}])
            assert tok.decode(pair.prompt_ids + ids) == full[:-1]

    b = collate_pairs(list(ds), tok.pad_token_id)
    B = len(ds)
    for n in range(2 * B):
        exp = EXPECTED[n % B]
        response = exp["chosen"] if n < B else exp["rejected"]
        ids, mask = b["input_ids"][n].tolist(), b["loss_mask"][n].tolist()
        trained = [t for t, m in zip(ids, mask) if m]
        masked = [t for t, m, a in zip(ids, mask, b["attention_mask"][n].tolist()) if a and not m]
        assert tok.decode(trained) == response + "<|im_end|>"
        assert tok.decode(masked) == chatml(exp["prompt_messages"]) + "<|im_start|>assistant\n"
        # masked-in tokens are one contiguous run right after the prompt
        first = mask.index(1)
        assert mask[first:first + len(trained)] == [1] * len(trained) and sum(mask) == len(trained)


def test_chosen_and_rejected_share_prompt_ids(tok):
    for pair in load(DATA / "sharegpt.json", tok):
        assert isinstance(pair, TokenizedPair)
        assert pair.chosen_ids != pair.rejected_ids


def test_encode_prompt_response_matches_dataset(tok):
    ds = load(DATA / "trl.jsonl", tok)
    for pair, exp in zip(ds, EXPECTED):
        p, r = encode_prompt_response(tok, exp["prompt_messages"], exp["chosen"])
        assert (p, r) == (pair.prompt_ids, pair.chosen_ids)


def test_plain_fallback_template_without_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    p, r = encode_prompt_response(tok, msgs, "Hello")
    # the fallback starts with the tokenizer's BOS (here <|im_start|>) when it has one distinct from EOS
    assert p[0] == tok.bos_token_id
    assert tok.decode(p[1:]) == "System: Be brief.\n\nUser: Hi\n\nAssistant: "
    assert tok.decode(r) == "Hello<|im_end|>" and r[-1] == tok.eos_token_id


def test_truncation_keeps_prompt_end_and_drops_empty_response():
    pair = TokenizedPair(list(range(100, 110)), [1, 2, 3, 4, 9], [5, 9])
    kept, ev = truncate_pair(pair, max_length=8, max_prompt_length=4)
    assert kept.prompt_ids == [106, 107, 108, 109]  # the END of the prompt
    assert kept.chosen_ids == [1, 2, 3, 4] and kept.rejected_ids == [5, 9]
    assert ev == {"prompt_truncated", "response_truncated"}
    kept, ev = truncate_pair(pair, max_length=20)
    assert kept == pair and not ev
    dropped, ev = truncate_pair(pair, max_length=10)  # no prompt limit, no room for an answer
    assert dropped is None and "empty response" in next(iter(ev))
    same, ev = truncate_pair(TokenizedPair([1], [7, 7, 8], [7, 7, 9]), max_length=3)
    assert same is None and "identical" in next(iter(ev))


def test_truncation_counts_in_stats(tok, tmp_path):
    long_prompt = "What is photosynthesis? " * 20
    recs = [
        {"prompt": long_prompt, "chosen": "Plants turn light.", "rejected": "No."},  # prompt truncated
        {"prompt": "Hi", "chosen": "The quick brown fox jumps over the lazy dog. " * 10, "rejected": "No."},
        {"prompt": "Hi", "chosen": "Yes.", "rejected": "No."},
    ]
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    logs = []
    ds = load(f, tok, max_length=64, max_prompt_length=32, log=logs.append)
    s = ds.stats
    assert (s.read, s.kept, s.prompt_truncated, s.response_truncated, s.truncated) == (3, 3, 1, 1, 2)
    assert len(ds[0].prompt_ids) == 32
    full_prompt, _ = encode_prompt_response(tok, [{"role": "user", "content": long_prompt}], "x")
    assert ds[0].prompt_ids == full_prompt[-32:]
    assert len(ds[1].prompt_ids) + len(ds[1].chosen_ids) == 64
    assert all(p.max_length <= 64 for p in ds)
    assert "2 truncated" in logs[0]

    # without a prompt limit the long prompt leaves no room -> dropped, and 1/3 > max_bad_fraction
    with pytest.raises(DataError, match=r"1 of 3 records .* max_bad_fraction"):
        load(f, tok, max_length=60)
    ds = load(f, tok, max_length=60, max_bad_fraction=0.5)
    assert ds.stats.kept == 2 and ds.stats.dropped == {"prompt fills max_length (empty response after truncation)": 1}
    assert ds.sources == ["t.jsonl:2", "t.jsonl:3"]


def test_folder_of_files(tok, tmp_path):
    for name in ("prompt.jsonl", "sharegpt.json"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load(tmp_path, tok)
    assert len(ds) == 5 and ds.stats.format == "prompt+sharegpt"
    assert ds.sources[0] == "prompt.jsonl:1" and ds.sources[2].startswith("sharegpt.json:")


def test_cache_hit_and_invalidation(tok, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes((DATA / "prompt.jsonl").read_bytes())
    cache = tmp_path / "cache"
    a = load(f, tok, cache_dir=cache)
    assert not a.stats.from_cache and len(os.listdir(cache)) == 1
    b = load(f, tok, cache_dir=cache)
    assert b.stats.from_cache and list(b) == list(a) and b.sources == a.sources and b.stats.read == 2
    load(f, tok, cache_dir=cache, max_length=300)  # other settings -> another entry
    assert len(os.listdir(cache)) == 2
    f.write_text((DATA / "prompt.jsonl").read_text() + '{"prompt": "Hi", "chosen": "a", "rejected": "b"}\n')
    c = load(f, tok, cache_dir=cache)
    assert not c.stats.from_cache and len(c) == 3


def test_progress_bar(tok, tmp_path, capsys):
    f = tmp_path / "many.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(50)))
    ds = load(f, tok, progress=True)
    assert len(ds) == 50
    assert "tokenizing many.jsonl" in capsys.readouterr().err


def test_chat_encoder_finds_end_of_turn(tok):
    assert ChatEncoder(tok).end_id == tok.convert_tokens_to_ids("<|im_end|>")


def _fresh_tok(tiny_model_dir, template):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = template
    return tok


def test_template_with_another_end_of_turn_token(tiny_model_dir):
    """A template that ends answers with a special token other than EOS (like Llama 3's <|eot_id|>)."""
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|endoftext|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tok = _fresh_tok(tiny_model_dir, template)
    assert ChatEncoder(tok).end_id == tok.convert_tokens_to_ids("<|endoftext|>") != tok.eos_token_id
    p, r = encode_prompt_response(tok, [{"role": "user", "content": "Hi"}], "Yes")
    assert tok.decode(p) == "user: Hi<|endoftext|>assistant: "
    assert tok.decode(r) == "Yes<|endoftext|>" and r.count(tok.eos_token_id) == 0


def test_template_that_rejects_a_conversation_is_a_data_error(tiny_model_dir):
    template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                "{% endif %}" + CHATML_TEMPLATE)
    tok = _fresh_tok(tiny_model_dir, template)
    with pytest.raises(DataError, match=r"^prompt\.jsonl:1: the tokenizer's chat template rejected .*System role"):
        load(DATA / "prompt.jsonl", tok)
    ds = load(DATA / "prompt.jsonl", tok, on_bad_record="skip", max_bad_fraction=0.5)
    assert len(ds) == 1 and ds.stats.skipped == {"chat template error": 1} and ds.sources == ["prompt.jsonl:2"]


def test_token_straddling_the_prompt_boundary_keeps_prompt_ids(tiny_model_dir):
    """When the conversation's tokens merge across the prompt/answer boundary, the prompt ids stay the
    prompt's own tokens and the answer is encoded on its own."""
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Th' + m['content'] + '<|im_end|>' }}"
                "{% else %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'Th' }}{% endif %}")
    tok = _fresh_tok(tiny_model_dir, template)
    prompt_text = "Tell me.\nTh"
    whole = tok("Tell me.\nThe quick brown fox<|im_end|>", add_special_tokens=False)["input_ids"]
    own = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert whole[: len(own)] != own  # the case under test: "The" is one token across the boundary
    p, r = encode_prompt_response(tok, [{"role": "user", "content": "Tell me."}], "e quick brown fox")
    assert p == own
    assert tok.decode(r) == "e quick brown fox<|im_end|>"
    ds_pair = ChatEncoder(tok).encode_pairs([PreferencePair([{"role": "user", "content": "Tell me."}],
                                                            "e quick brown fox", "e lazy dog", "x:1")])[0]
    assert ds_pair.prompt_ids == own and ds_pair.chosen_ids == r
