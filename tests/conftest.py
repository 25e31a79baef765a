"""Shared fixtures: a tiny Llama and its tokenizer, built offline from config in a temp folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Photosynthesis turns light into chemical energy.",
    "I can't help with that request, but I can explain how to stay safe.",
    "光合作用是植物利用光能把二氧化碳和水转化为有机物的过程。",
    "我不能帮助你做这件事，但我可以介绍相关的安全知识。",
    "1. First point. 2. Second point. 3. Third point. 12 + 7 = 19.",
]


def build_tiny_model_dir(path, *, vocab_size: int = 320, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A randomly initialised 2-layer Llama with a byte-level ChatML tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from minidpo.tokenizer import train_chat_tokenizer

    tok = train_chat_tokenizer(TINY_CORPUS * 4, vocab_size=vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model")))
