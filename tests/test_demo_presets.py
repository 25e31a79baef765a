"""Model presets and the untrained init folder the SFT step starts from."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from minidpo.demo.generate import generate
from minidpo.demo.presets import PRESETS, build_model, corpus_from_records, make_init_model, tokenizer_training_pieces


class _Tok:  # just what build_model reads from a tokenizer
    def __init__(self, n):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 1, 2, 0

    def __len__(self):
        return self.n


def test_minimind_26m_mirrors_minimind_sizes():
    model = build_model("minimind-26m", _Tok(6400))
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size) == (6400, 512, 8, 8, 2, 1408)
    assert c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    n = sum(p.numel() for p in model.parameters())
    assert 24e6 < n < 28e6, n


def test_demo_preset_is_small_and_seeded():
    a, b = build_model("demo", _Tok(2000), seed=1), build_model("demo", _Tok(2000), seed=1)
    assert sum(p.numel() for p in a.parameters()) < 5e6
    assert a.config.num_hidden_layers == PRESETS["demo"]["num_hidden_layers"]
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (1, 2, 0)


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("gpt-5", _Tok(300))


def test_training_pieces_isolate_cjk_characters_and_digits():
    assert tokenizer_training_pieces("猫是 cat 17+25") == ["猫", "是", " cat ", "1", "7", "+", "2", "5"]


def test_make_init_model_writes_a_loadable_folder(tmp_path):
    train, _ = generate(seed=0, n_train=400, n_heldout=40)
    out = make_init_model(tmp_path / "init", "demo", corpus_from_records(train), seed=0)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tok) <= PRESETS["demo"]["vocab_size"]
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    info = json.loads((tmp_path / "init" / "minidpo_init.json").read_text())
    assert info["preset"] == "demo" and info["vocab_size"] == len(tok)
    # Chinese: one token per character (a held-out topic word tokenizes like a seen one); digits one each
    assert len(tok.tokenize("大象是一种动物")) == 7
    assert [t.lstrip("Ġ") for t in tok.tokenize("The answer is 42")][-2:] == ["4", "2"]
    assert "Ġanimal" in tok.get_vocab()  # English keeps whole-word tokens
    with pytest.raises(ValueError, match="non-empty corpus"):
        make_init_model(tmp_path / "empty", "demo", [])
