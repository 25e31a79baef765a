"""Model presets for the demo and a builder for an untrained ("init") model folder.

    build_model(preset, tokenizer) -> LlamaForCausalLM        random weights, sized by the preset
    make_init_model(out_dir, preset, corpus_texts) -> out_dir  tokenizer trained on the corpus + model, saved

    python -m minidpo.demo.presets --data data/demo --out runs/demo-init [--preset demo]

MiniMind's small model is a Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention,
tied embeddings) with a 6400-entry byte-level BPE vocabulary; "minimind-26m" mirrors its sizes.
"demo" is the same architecture shrunk so that SFT and DPO on the bundled data each take minutes
on two CPU cores. The SFT loop that turns the init folder into the SFT model lives in `minidpo.sft`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minidpo.demo.generate import read_jsonl
from minidpo.tokenizer import train_chat_tokenizer

PRESETS: dict[str, dict] = {
    # ~2.4M parameters: trains on a laptop CPU in minutes.
    "demo": dict(vocab_size=2048, hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
                 num_key_value_heads=2, intermediate_size=512, max_position_embeddings=512,
                 tie_word_embeddings=True, rope_theta=10000.0),
    # MiniMind2-Small sizes (~26M parameters).
    "minimind-26m": dict(vocab_size=6400, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=1408, max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}
DEFAULT_PRESET = "demo"


def preset_config(preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


def build_model(preset: str, tokenizer, *, seed: int | None = 0):
    """A randomly initialised LlamaForCausalLM sized by `preset`, with the tokenizer's vocabulary and
    special tokens (the embedding has len(tokenizer) rows, which may be fewer than the preset's
    vocab_size when the corpus is too small to learn that many merges). float32."""
    cfg = preset_config(preset)
    cfg["vocab_size"] = len(tokenizer)
    config = LlamaConfig(
        **cfg,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


_PIECE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|\d|[^\u3400-\u4dbf\u4e00-\u9fff\d]+")


def tokenizer_training_pieces(text: str) -> list[str]:
    """The text as the tokenizer trainer sees it: every CJK character and every digit on its own.

    The byte-level pre-tokenizer keeps a whole run of Chinese characters (a clause) together, so on
    a templated corpus BPE learns whole clauses as single tokens ("猫是一种..." -> one id), and a
    held-out topic word then tokenizes completely differently from the training ones; numbers get
    merged or not by frequency ("18" one token, "35" two). Training on these pieces limits merges to
    single characters and digits: when encoding, Chinese becomes one token per character and numbers
    one token per digit, alike for seen and unseen prompts. English keeps its whole-word tokens.
    """
    return _PIECE.findall(text)


def make_init_model(out_dir, preset: str = DEFAULT_PRESET, corpus_texts=(), *, seed: int = 0) -> str:
    """Train the chat tokenizer on `corpus_texts`, build the preset's model and save both to `out_dir`
    as a Hugging Face folder (config, safetensors, tokenizer with its ChatML template). Returns out_dir."""
    texts = list(corpus_texts)
    if not texts:
        raise ValueError("make_init_model needs a non-empty corpus to train the tokenizer on")
    pieces = [piece for t in texts for piece in tokenizer_training_pieces(t)]
    tokenizer = train_chat_tokenizer(pieces, vocab_size=preset_config(preset)["vocab_size"])
    model = build_model(preset, tokenizer, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"preset": preset, "seed": seed, "n_params": n_params, "vocab_size": len(tokenizer),
            "corpus_texts": len(texts), "config": preset_config(preset)}
    (out / "minidpo_init.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return str(out)


def corpus_from_records(records) -> list[str]:
    """Tokenizer-training texts of preference records: every prompt, chosen and rejected answer."""
    texts = []
    for r in records:
        texts += [r["prompt"], r["chosen"], r["rejected"]]
    return texts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidpo.demo.presets",
                                description="Train the demo tokenizer and save an untrained model folder.")
    p.add_argument("--data", required=True, help="folder with train.jsonl (python -m minidpo.demo.generate)")
    p.add_argument("--out", required=True, help="output folder for the untrained model + tokenizer")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    records = read_jsonl(Path(args.data) / "train.jsonl")
    out = make_init_model(args.out, args.preset, corpus_from_records(records), seed=args.seed)
    info = json.loads((Path(out) / "minidpo_init.json").read_text())
    print(f"saved untrained {args.preset} model ({info['n_params'] / 1e6:.1f}M parameters, "
          f"vocab {info['vocab_size']}) to {out}")


if __name__ == "__main__":
    main()
