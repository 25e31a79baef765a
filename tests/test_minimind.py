"""MiniMind checkpoints: detection from names and shapes, strict conversion, logits equal to a forward
written here from MiniMind's architecture description, the export back to a MiniMind .pth (bit-exact
round trip), MoE routing per token (packed == unpacked) and MiniMind's aux-loss weighting, and short DPO
runs from a .pth through `make train`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from minidpo.errors import SourceError
from minidpo.sources import minimind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ checkpoints in MiniMind's layout
def make_state_dict(vocab: int, *, generation: str = "minimind-3", moe: bool = False, hidden: int = 32, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, head_dim: int = 12, intermediate: int = 40, experts: int = 4,
                    seed: int = 0) -> dict:
    """Random fp16 weights under MiniMind's key names ({k: v.half()}), lm_head tied to the embedding."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).half()

    def norm(n):
        return (1 + 0.3 * torch.randn(n, generator=g)).half()

    if generation == "minimind2":
        head_dim = hidden // minimind.MINIMIND2_HEADS
        heads = minimind.MINIMIND2_HEADS
    sd = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0)}
    for n in range(layers):
        p = f"model.layers.{n}."
        sd[f"{p}self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        sd[f"{p}self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        sd[f"{p}self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        sd[f"{p}self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        if generation == "minimind-3":
            sd[f"{p}self_attn.q_norm.weight"] = norm(head_dim)
            sd[f"{p}self_attn.k_norm.weight"] = norm(head_dim)
        sd[f"{p}input_layernorm.weight"] = norm(hidden)
        sd[f"{p}post_attention_layernorm.weight"] = norm(hidden)
        mlps = [f"{p}mlp.experts.{e}." for e in range(experts)] if moe else [f"{p}mlp."]
        if moe:
            sd[f"{p}mlp.gate.weight"] = w(experts, hidden, scale=1.0)
        for m in mlps:
            sd[f"{m}gate_proj.weight"] = w(intermediate, hidden)
            sd[f"{m}up_proj.weight"] = w(intermediate, hidden)
            sd[f"{m}down_proj.weight"] = w(hidden, intermediate)
    sd["model.norm.weight"] = norm(hidden)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied, saved under both names as MiniMind does
    return sd


# ----------------------------------------------------------- MiniMind's forward, from its description
def spec_forward(sd: dict, ids: torch.Tensor, *, heads: int, kv_heads: int, head_dim: int, eps: float,
                 qk_norm: bool, experts: int = 0, router_probs: list | None = None) -> torch.Tensor:
    """fp32 logits: RMSNorm, q/k RMSNorm over the head dim before rotate-half RoPE (theta 1e6), GQA,
    causal softmax attention, SwiGLU; MoE: softmax router, top-1 expert, weight renormalised to 1."""
    W = {k: v.float() for k, v in sd.items()}

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def swiglu(x, p):
        return (torch.nn.functional.silu(x @ W[p + "gate_proj.weight"].T) * (x @ W[p + "up_proj.weight"].T)) @ W[p + "down_proj.weight"].T

    B, T = ids.shape
    inv = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # x: (B, h, T, d)
        half = torch.cat([-x[..., head_dim // 2:], x[..., :head_dim // 2]], -1)
        return x * cos + half * sin

    x = W["model.embed_tokens.weight"][ids]
    n = 0
    while f"model.layers.{n}.input_layernorm.weight" in W:
        p = f"model.layers.{n}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(B, T, heads, head_dim)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(B, T, kv_heads, head_dim)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, T, kv_heads, head_dim)
        if qk_norm:
            q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, heads * head_dim)
        x = x + attn @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        if experts:
            probs = (h @ W[p + "mlp.gate.weight"].T).softmax(-1)
            if router_probs is not None:
                router_probs.append(probs.reshape(-1, experts))
            top = probs.argmax(-1)  # top-1; its renormalised weight is exactly 1
            out = torch.zeros_like(h)
            for e in range(experts):
                sel = top == e
                out[sel] = swiglu(h[sel], f"{p}mlp.experts.{e}.")
            x = x + out
        else:
            x = x + swiglu(h, p + "mlp.")
        n += 1
    return rms(x, W["model.norm.weight"]) @ W["model.embed_tokens.weight"].T


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from conftest import TINY_CORPUS

    from minidpo.tokenizer import train_chat_tokenizer

    path = tmp_path_factory.mktemp("minimind_tokenizer")
    train_chat_tokenizer(TINY_CORPUS * 4, vocab_size=320).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def vocab(tokenizer_dir):
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("minimind_cache"))


def save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


KINDS = {
    "minimind-3": dict(generation="minimind-3"),
    "minimind-3-moe": dict(generation="minimind-3", moe=True),
    "minimind2": dict(generation="minimind2", kv_heads=2),
}


# --------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("kind", KINDS)
def test_generation_and_sizes_are_read_from_the_tensors(kind, tmp_path):
    sd = make_state_dict(300, hidden=48, layers=3, intermediate=56, **KINDS[kind])
    spec = minimind.detect(sd)
    expected = dict(vocab_size=300, hidden_size=48, num_hidden_layers=3, intermediate_size=56, tie_word_embeddings=True,
                    dtype="float16")
    if kind == "minimind2":
        expected.update(generation="minimind2", moe=False, num_attention_heads=8, num_key_value_heads=2, head_dim=6)
    else:
        expected.update(generation="minimind-3", moe=kind.endswith("moe"), num_attention_heads=4, num_key_value_heads=2,
                        head_dim=12, num_experts=4 if kind.endswith("moe") else 0)
    assert {k: getattr(spec, k) for k in expected} == expected
    assert spec.architecture == {"minimind-3": "Qwen3ForCausalLM", "minimind-3-moe": "Qwen3MoeForCausalLM",
                                 "minimind2": "LlamaForCausalLM"}[kind]
    # a resume file holds the same weights under "model", next to the optimizer and the position
    resume = save(tmp_path, "full_sft_48_resume.pth", {"model": sd, "optimizer": {"state": {}, "param_groups": []},
                                                       "epoch": 1, "step": 200, "wandb_id": None})
    assert minimind.detect(minimind.load_state_dict(resume)) == spec


def test_the_default_minimind3_sizes():
    """768 hidden, 8 heads, 4 KV heads, head dim 96, MLP 2432, vocab 6400 (shapes only: meta tensors)."""
    shapes = minimind.expected_shapes(minimind.MiniMindSpec("minimind-3", False, 6400, 768, 8, 8, 4, 96, 2432))
    sd = {k: torch.empty(s, dtype=torch.float16, device="meta") for k, s in shapes.items()}
    spec = minimind.detect({k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert (spec.hidden_size, spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads,
            spec.head_dim, spec.intermediate_size, spec.vocab_size) == (768, 8, 8, 4, 96, 2432, 6400)


# ------------------------------------------------------------------------------------------ errors
def test_minimind2_moe_is_refused_by_name(tmp_path, tokenizer_dir, cache_dir, vocab):
    sd = make_state_dict(vocab, generation="minimind2", moe=True)
    sd["model.layers.0.mlp.shared_experts.0.gate_proj.weight"] = torch.zeros(40, 32).half()
    path = save(tmp_path, "full_sft_512_moe.pth", sd)
    with pytest.raises(SourceError, match=r"full_sft_512_moe.pth: a minimind2 mixture-of-experts .* no transformers "
                                            r"architecture matches it; supported: minimind-3 dense or MoE"):
        minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir)


def test_old_layout_is_refused_by_name(tmp_path, tokenizer_dir, cache_dir):
    path = save(tmp_path, "old.pth", {"tok_embeddings.weight": torch.zeros(8, 4).half(),
                                      "layers.0.attention.wq.weight": torch.zeros(4, 4).half()})
    with pytest.raises(SourceError, match=r"old.pth: the 2025-04-or-older MiniMind layout \(layers.0.attention.wq.weight, "
                                            r"tok_embeddings.weight, ...\) is not supported; supported:"):
        minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir)


def test_truncated_file_is_one_line(tmp_path, tokenizer_dir, cache_dir, vocab):
    path = save(tmp_path, "cut.pth", make_state_dict(vocab))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut.pth: cannot read it as a PyTorch state dict \(truncated") as e:
        minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir)
    assert "\n" not in str(e.value)


def test_strict_conversion_names_the_missing_and_the_misshapen(tmp_path, tokenizer_dir, cache_dir, vocab):
    sd = make_state_dict(vocab, moe=True)
    del sd["model.layers.1.mlp.experts.3.up_proj.weight"]
    with pytest.raises(SourceError, match=r"missing 1 \(model.layers.1.mlp.experts.3.up_proj.weight\)"):
        minimind.ensure_hf_folder(save(tmp_path, "a.pth", sd), tokenizer_dir, cache_dir)
    sd = make_state_dict(vocab)
    sd["model.layers.0.self_attn.bias"] = torch.zeros(3).half()
    with pytest.raises(SourceError, match=r"unexpected 1 \(model.layers.0.self_attn.bias\)"):
        minimind.ensure_hf_folder(save(tmp_path, "b.pth", sd), tokenizer_dir, cache_dir)
    sd = make_state_dict(vocab)
    sd["model.layers.1.mlp.down_proj.weight"] = torch.zeros(32, 41).half()
    with pytest.raises(SourceError, match=r"model.layers.1.mlp.down_proj.weight has shape \[32, 41\], expected \[32, 40\]"):
        minimind.ensure_hf_folder(save(tmp_path, "c.pth", sd), tokenizer_dir, cache_dir)
    assert not os.listdir(cache_dir) or all(not f.startswith(("a-", "b-", "c-")) for f in os.listdir(cache_dir))


def test_pth_without_tokenizer_is_one_line(tmp_path, vocab):
    from minidpo.config import RunConfig, validate
    from minidpo.errors import ConfigError
    from minidpo.sources import hf_folder

    path = save(tmp_path, "full_sft_768.pth", make_state_dict(vocab))
    with pytest.raises(ConfigError, match=r"--ref_model .*full_sft_768.pth: a MiniMind .pth holds no tokenizer: pass --tokenizer"):
        hf_folder(path, role="--ref_model")
    with pytest.raises(ConfigError, match=r"--model .*full_sft_768.pth: a MiniMind .pth holds no tokenizer"):
        validate(RunConfig(model=path, data=path, output_dir=str(tmp_path / "o")))


def test_a_tokenizer_too_large_for_the_vocabulary_is_refused(tmp_path, tokenizer_dir, cache_dir):
    path = save(tmp_path, "small.pth", make_state_dict(100))
    with pytest.raises(SourceError, match=r"--tokenizer .*: \d+ tokens but .*small.pth has a vocabulary of 100"):
        minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir)


# ------------------------------------------------------------------------------ logits and export
@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer_dir, cache_dir, vocab):
    """kind -> (path of the .pth, its state dict, the converted folder)."""
    out = {}
    folder = tmp_path_factory.mktemp("minimind_pth")
    for kind, kw in KINDS.items():
        sd = make_state_dict(vocab, seed=len(out), **kw)
        path = str(folder / f"full_sft_32_{kind}.pth")
        torch.save(sd, path)
        out[kind] = (path, sd, minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_converted_logits_equal_the_spec_forward(kind, converted):
    from transformers import AutoModelForCausalLM

    _, sd, folder = converted[kind]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    vocab = sd["model.embed_tokens.weight"].shape[0]
    ids = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    if kind == "minimind2":
        kw = dict(heads=8, kv_heads=2, head_dim=4, eps=1e-5, qk_norm=False)
    else:
        kw = dict(heads=4, kv_heads=2, head_dim=12, eps=1e-6, qk_norm=True, experts=4 if kind.endswith("moe") else 0)
    expected = spec_forward(sd, ids, **kw)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() < 2e-5 * expected.abs().max().item()
    if kind.endswith("moe"):  # the random router really spreads the tokens over the experts
        h = model.model.layers[0]
        assert type(h.mlp).__name__ == "Qwen3MoeSparseMoeBlock"


def test_second_call_uses_the_cache(converted, tokenizer_dir, cache_dir, monkeypatch):
    path, _, folder = converted["minimind-3"]
    monkeypatch.setattr(minimind, "build_hf_model", lambda *a, **k: pytest.fail("converted twice"))
    assert minimind.ensure_hf_folder(path, tokenizer_dir, cache_dir) == folder
    info = json.load(open(os.path.join(folder, minimind.MARKER)))
    assert info["architecture"] == "Qwen3ForCausalLM" and info["generation"] == "minimind-3"


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_is_bit_exact(kind, converted, tmp_path):
    path, sd, folder = converted[kind]
    out = tmp_path / "back.pth"
    minimind.export_minimind(folder, str(out))
    back = torch.load(out, weights_only=True)
    assert sorted(back) == sorted(sd)  # a strict load_state_dict into MiniMind's layout: same keys
    for key, value in sd.items():
        assert back[key].dtype == torch.float16 and torch.equal(back[key], value), key


def test_export_cli(converted, tmp_path, capsys):
    from minidpo.cli import main

    _, sd, folder = converted["minimind-3-moe"]
    assert main(["export-minimind", folder, str(tmp_path / "m.pth")]) == 0
    assert "--hidden_size 32 --num_hidden_layers 2 --use_moe 1" in capsys.readouterr().out
    assert main(["export-minimind", str(tmp_path), str(tmp_path / "x.pth")]) == 2
    assert "neither a Hugging Face model folder nor a run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ MoE DPO
MOE_KW = dict(heads=4, kv_heads=2, head_dim=12, eps=1e-6, qk_norm=True, experts=4)


def test_router_loss_is_minimind_sum_over_layers(converted):
    """E * sum_e load_e * mean_prob_e per layer (MiniMind's MOEFeedForward), summed over the layers."""
    from transformers import AutoModelForCausalLM

    from minidpo.moe import RouterLoss

    _, sd, folder = converted["minimind-3-moe"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    router = RouterLoss.attach(model)
    assert router is not None and len(router.routers) == 2
    ids = torch.randint(0, sd["model.embed_tokens.weight"].shape[0], (2, 19), generator=torch.Generator().manual_seed(3))
    router.clear()
    model(input_ids=ids)
    ours = router.loss({"attention_mask": torch.ones_like(ids)})
    probs = []
    spec_forward(sd, ids, **MOE_KW, router_probs=probs)
    expected = 0.0
    for p in probs:
        load = torch.nn.functional.one_hot(p.argmax(-1), 4).float().mean(0)
        expected += 4 * (load * p.mean(0)).sum()
    assert len(probs) == 2 and ours.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(len(p.argmax(-1).unique()) > 1 for p in probs)  # the tokens really spread over the experts
    assert ours.item() > 2 * 1.0  # two layers, each at least 1 (1 = perfectly balanced)


def test_moe_packed_forward_equals_two_sequences(converted):
    """Routing is per token: the shared-prompt forward gives the same log-probs, gradients and router loss."""
    import random

    from transformers import AutoModelForCausalLM

    from minidpo.data import TokenizedPair, collate_pairs
    from minidpo.data.collate import collate_packed
    from minidpo.logprobs import concatenated_logps, packed_forward_unsupported, packed_logps
    from minidpo.moe import RouterLoss

    _, sd, folder = converted["minimind-3-moe"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    assert packed_forward_unsupported(model) is None
    rng = random.Random(0)
    word = lambda k: [rng.randrange(3, 300) for _ in range(k)]  # noqa: E731
    pairs = [TokenizedPair(word(rng.randint(2, 9)), word(rng.randint(1, 8)), word(rng.randint(1, 8))) for _ in range(3)]
    router = RouterLoss.attach(model)
    results = []
    for collate, fn in ((collate_pairs, concatenated_logps), (collate_packed, packed_logps)):
        model.zero_grad()
        batch = collate(pairs, 0)
        router.clear()
        chosen, rejected, _ = fn(model, batch, "sum")
        aux = router.loss(batch)
        (chosen.sum() - rejected.sum() + aux).backward()
        grad = model.model.layers[0].mlp.gate.weight.grad.clone()
        results.append((chosen.detach(), rejected.detach(), aux.detach(), grad))
    (c1, r1, a1, g1), (c2, r2, a2, g2) = results
    torch.testing.assert_close(c2, c1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r2, r1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(a2, a1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g2, g1, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minimind-3", "minimind-3-moe"])
def test_dpo_from_a_minimind_pth_through_make_train(kind, converted, tokenizer_dir, tmp_path):
    """`make train MODEL=x.pth TOKENIZER=dir DATA=...` on MiniMind-format data, real DeepSpeed engines:
    the command line make prints (`-n`; `-o .venv/bin/.installed` keeps it from reinstalling the venv),
    run with a free rendezvous port (other runs on the machine may hold the default one). Then back to a
    MiniMind .pth."""
    import shlex
    import socket

    path, sd, _ = converted[kind]
    out = tmp_path / "run"
    args = ("--max_steps 2 --batch_size 1 --dtype fp32 --max_length 96 --max_prompt_length 48 --log_interval 1 "
            "--save_interval 0 --learning_rate 1e-3")
    make = ["make", "-n", "-s", "-o", ".venv/bin/.installed", "train", f"MODEL={path}", f"TOKENIZER={tokenizer_dir}",
           f"DATA={ROOT}/tests/data/minimind.jsonl", f"OUT={out}", "DS_CONFIG=ds_configs/zero0.json", f"ARGS={args}"]
    printed = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cmd = shlex.split(printed.replace("\\\n", " "))
    assert cmd[0].endswith(".venv/bin/deepspeed") and cmd[cmd.index("--tokenizer") + 1] == tokenizer_dir
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    proc = subprocess.run(cmd[:1] + ["--master_port", port] + cmd[1:], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shared-prompt forward off" not in proc.stdout + proc.stderr  # MoE trains packed too
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 2 and rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[1]["loss"] != rows[0]["loss"]
    if kind.endswith("moe"):
        assert all(r["aux_loss"] >= 2.0 for r in rows)  # 2 layers, each >= 1, weighted 5e-4 into the loss
        assert json.load(open(out / "export" / "config.json"))["router_aux_loss_sum_over_layers"] is True
    else:
        assert "aux_loss" not in rows[0]
    back = tmp_path / "dpo.pth"
    assert subprocess.run([sys.executable, "-m", "minidpo.cli", "export-minimind", str(out), str(back)],
                          cwd=ROOT, capture_output=True).returncode == 0
    trained = torch.load(back, weights_only=True)
    assert sorted(trained) == sorted(sd)
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"], sd["model.layers.0.self_attn.q_proj.weight"])
