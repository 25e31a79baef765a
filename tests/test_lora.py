"""LoRA DPO on real DeepSpeed engines: the adapter-off reference is the base model, training moves only
the adapter, exports reproduce the engine, two ranks and resume behave as for full training, and bad
settings are one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import pytest
import torch

from minidpo.config import RunConfig
from minidpo.errors import ConfigError
from test_training import ROOT, _launch, losses, pairs_file, read_metrics, run  # noqa: F401 (pairs_file: fixture)

pytestmark = pytest.mark.slow
LORA = dict(lora_r=4, lora_alpha=8.0, dtype="fp32")


def lora_engine(model_dir, stage: int, dtype: str = "fp32", **lora_settings):
    """A LoRA policy engine as train() builds it, and a batch of 4 pairs."""
    from minidpo import lora
    from minidpo.distributed import setup_distributed
    from minidpo.ds_config import resolve_ds_config
    from minidpo.engine import build_policy_engine
    from minidpo.models import load_causal_lm
    from minidpo.schedule import warmup_cosine

    setup_distributed()
    torch.manual_seed(0)
    cfg = RunConfig(model=model_dir, batch_size=4, learning_rate=1e-2, **{**LORA, "dtype": dtype, **lora_settings})
    ds = resolve_ds_config(f"{ROOT}/ds_configs/zero{stage}.json", cfg, 1, on_cpu=True)
    model = lora.wrap(load_causal_lm(model_dir, trainable=True), cfg, log=lambda *a: None)
    return build_policy_engine(model, ds, warmup_cosine(10, 0, 1.0))


def tiny_batch(model_dir, data, packed: bool):
    from minidpo.data import collate_pairs, load_preference_data
    from minidpo.data.collate import collate_packed
    from minidpo.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    pairs = load_preference_data(data, tok, max_length=64, cache_dir=None, log=None)
    return (collate_packed if packed else collate_pairs)([pairs[i] for i in range(4)], tok.pad_token_id), tok


def train_a_little(engine, batch, steps=2):
    from minidpo.logprobs import pair_logps

    for _ in range(steps):  # move the adapter away from its initial (zero-update) state
        chosen, rejected, _ = pair_logps(engine, batch, "sum")
        engine.backward(-(chosen - rejected).mean())
        engine.step()


def logps(model, batch):
    from minidpo.logprobs import pair_logps

    with torch.no_grad():
        return torch.cat(pair_logps(model, batch, "sum")[:2])


@pytest.mark.parametrize("packed", [True, False])
def test_adapter_off_reference_is_the_base_model(tiny_model_dir, pairs_file, packed):
    """Exact in fp32: the same base weights through the same kernels, with or without PEFT around them
    (the packed batch goes through the fused LM head, the plain one through the model's own head)."""
    from minidpo.models import load_causal_lm
    from minidpo.lora import AdapterOffReference

    batch, _ = tiny_batch(tiny_model_dir, pairs_file, packed)
    engine = lora_engine(tiny_model_dir, stage=2)
    train_a_little(engine, batch)
    base = load_causal_lm(tiny_model_dir, trainable=False).eval()
    reference = logps(AdapterOffReference(engine), batch)
    assert torch.equal(reference, logps(base, batch))
    assert not torch.allclose(logps(engine, batch), reference, atol=1e-2)  # the adapter did move the policy
    assert engine.module.training  # the reference forward ran in eval mode and left the policy training


def test_lora_run_moves_only_the_adapter(tmp_path, tiny_model_dir, pairs_file):
    from safetensors.torch import load_file

    rows = run(tmp_path, "lora", tiny_model_dir, pairs_file, save_interval=3, **LORA)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before any update
    assert losses(rows)[-1] < losses(rows)[0] - 0.01  # it learns
    saved = torch.load(tmp_path / "lora/checkpoints/step_00000006/mp_rank_00_model_states.pt",
                       weights_only=False)["module"]
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    prefix = "base_model.model."
    adapter = {k: v for k, v in saved.items() if ".lora_" in k}
    frozen = {k.replace(".base_layer", "")[len(prefix):]: v for k, v in saved.items() if ".lora_" not in k}
    assert set(frozen) - {"lm_head.weight"} == set(base) and len(adapter) == 2 * 7 * 2  # A, B; 7 linears; 2 layers
    for k, v in base.items():
        assert torch.equal(frozen[k], v), f"base weight {k} changed"
    assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it moved
    # the PEFT adapter and the merged model are exported; the merged one differs from the base
    assert os.path.isfile(tmp_path / "lora/export/adapter/adapter_config.json")
    merged = load_file(str(tmp_path / "lora/export/model.safetensors"))
    assert not torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert os.path.isdir(tmp_path / "lora/tensorboard")


def test_merged_export_and_adapter_folder_reproduce_the_engine(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    """ZeRO-3 (the export gathers the partitions), fp32: the merged folder loads in plain transformers,
    and the adapter folder, passed to sources.hf_folder, becomes a folder with the same log-probs."""
    from transformers import AutoModelForCausalLM

    from minidpo.checkpoint import export_hf
    from minidpo.sources import hf_folder

    monkeypatch.setattr("minidpo.sources.adapter.CACHE_DIR", str(tmp_path / "cache"))
    batch, tok = tiny_batch(tiny_model_dir, pairs_file, packed=False)
    engine = lora_engine(tiny_model_dir, stage=3)
    train_a_little(engine, batch)
    engine.eval()
    expected = logps(engine, batch)
    export_hf(engine, tok, str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert "peft" not in json.dumps(config).lower() and not (tmp_path / "hf/adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    assert torch.allclose(logps(merged, batch), expected, atol=1e-4)
    folder = hf_folder(str(tmp_path / "hf/adapter"))
    assert folder.startswith(str(tmp_path / "cache")) and hf_folder(str(tmp_path / "hf/adapter")) == folder  # cached
    from_adapter = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert torch.allclose(logps(from_adapter, batch), expected, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert not torch.allclose(logps(base, batch), expected, atol=1e-2)


def test_zero3_bf16_keeps_adapter_and_base_in_one_dtype(tiny_model_dir, pairs_file):
    from minidpo.lora import AdapterOffReference

    batch, _ = tiny_batch(tiny_model_dir, pairs_file, packed=True)
    engine = lora_engine(tiny_model_dir, stage=3, dtype="bf16")
    assert {p.dtype for p in engine.module.parameters()} == {torch.bfloat16}
    reference = logps(AdapterOffReference(engine), batch)
    train_a_little(engine, batch, steps=1)
    assert torch.isfinite(reference).all() and torch.isfinite(logps(engine, batch)).all()


def test_starting_adapter_is_the_reference_and_the_policy_trains_a_copy(tmp_path, tiny_model_dir, pairs_file):
    first = run(tmp_path, "sft_lora", tiny_model_dir, pairs_file, max_steps=3, **LORA)
    adapter = str(tmp_path / "sft_lora/export/adapter")
    before = open(os.path.join(adapter, "adapter_model.safetensors"), "rb").read()
    rows = run(tmp_path, "continued", tiny_model_dir, pairs_file, max_steps=3, lora_adapter=adapter, dtype="fp32")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == base + adapter == reference
    # ...and that reference is not the base: the first batch scores differently than under the base
    assert rows[0]["logps/chosen"] != pytest.approx(first[0]["logps/chosen"], abs=1e-3)
    assert losses(rows)[-1] < losses(rows)[0]
    assert open(os.path.join(adapter, "adapter_model.safetensors"), "rb").read() == before  # a copy was trained


def test_resume_continues_the_same_lora_curve(tmp_path, tiny_model_dir, pairs_file):
    full = run(tmp_path, "full", tiny_model_dir, pairs_file, save_interval=3, keep_checkpoints=3, lora_dropout=0.1, **LORA)
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "full/checkpoints/step_00000003", stopped / "checkpoints/step_00000003")
    (stopped / "checkpoints/latest").write_text("step_00000003")
    resumed = run(tmp_path, "stopped", tiny_model_dir, pairs_file, resume=True, lora_dropout=0.1, **LORA)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert losses(resumed) == pytest.approx(losses(full)[3:], abs=1e-6)  # dropout's RNG is restored too
    assert [r["grad_norm"] for r in resumed] == pytest.approx([r["grad_norm"] for r in full[3:]], rel=1e-5)


def test_lora_zero3_two_ranks_train_like_one_rank(tmp_path, tiny_model_dir, pairs_file):
    """torchrun, ZeRO-3, the reference precomputed by both ranks with the adapter off; the one-rank run
    computes it on the fly."""
    args = ["--model", tiny_model_dir, "--data", pairs_file, "--deepspeed", "ds_configs/zero3.json", "--dtype", "fp32",
            "--learning_rate", "1e-3", "--max_steps", "4", "--log_interval", "1", "--save_interval", "0",
            "--max_length", "64", "--max_prompt_length", "32", "--beta", "0.5", "--lora_r", "4", "--lora_alpha", "8",
            "--precompute_ref", "true", "--output_dir", str(tmp_path / "two"), "--batch_size", "2"]
    bindir = os.path.dirname(sys.executable)
    _launch([f"{bindir}/torchrun", "--nproc_per_node", "2", "--master_port", "29611", "trainer/train_dpo.py"] + args,
            tmp_path)
    one = run(tmp_path, "one", tiny_model_dir, pairs_file, deepspeed=f"{ROOT}/ds_configs/zero3.json", max_steps=4,
              batch_size=4, **LORA)
    two = read_metrics(tmp_path / "two")
    assert two[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert losses(two) == pytest.approx(losses(one), abs=1e-3)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-3)
    assert os.path.isfile(tmp_path / "two/export/adapter/adapter_model.safetensors")


def test_bad_lora_settings_are_one_line_errors(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from conftest import build_tiny_model_dir
    from minidpo import lora
    from minidpo.models import load_causal_lm

    def error(fn) -> str:
        with pytest.raises(ConfigError) as e:
            fn()
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "--lora_r -1" in error(lambda: lora.check_settings(RunConfig(lora_r=-1)))
    model = load_causal_lm(tiny_model_dir, trainable=True)
    message = error(lambda: lora.wrap(model, RunConfig(model=tiny_model_dir, lora_r=4, lora_target_modules="q_proj,qkv"),
                                      log=lambda *a: None))
    assert "--lora_target_modules" in message and "'qkv'" in message and "up_proj" in message
    # an adapter trained on another model of the same shapes (another seed)
    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(other), LoraConfig(r=4, target_modules=["q_proj"]))
    peft.save_pretrained(tmp_path / "other_adapter")
    message = error(lambda: lora.wrap(load_causal_lm(tiny_model_dir, trainable=True),
                                      RunConfig(model=tiny_model_dir, lora_adapter=str(tmp_path / "other_adapter")),
                                      log=lambda *a: None))
    assert message.startswith(f"--lora_adapter {tmp_path / 'other_adapter'}: an adapter for base model")
    assert "--lora_adapter" in error(lambda: lora.check_settings(RunConfig(lora_adapter=str(tmp_path))))


def test_lora_zero_stages_and_activation_checkpointing_agree(tmp_path, tiny_model_dir, pairs_file):
    """bf16 mixed precision: ZeRO-0, 1 and 2 give the same LoRA curve; recomputing activations changes
    no number (fp32). ZeRO-3 is covered by the two-rank test and the export test."""
    bf16 = {**LORA, "dtype": "bf16", "max_steps": 3}
    curves = {stage: losses(run(tmp_path, f"z{stage}", tiny_model_dir, pairs_file,
                                deepspeed=f"{ROOT}/ds_configs/zero{stage}.json", **bf16)) for stage in (0, 1, 2)}
    assert curves[2][0] == pytest.approx(math.log(2), abs=1e-6)
    for stage in (0, 1):
        assert curves[stage] == pytest.approx(curves[2], abs=2e-3), f"ZeRO-{stage} differs from ZeRO-2"
    plain = run(tmp_path, "plain", tiny_model_dir, pairs_file, max_steps=3, **LORA)
    recomputed = run(tmp_path, "ckpt", tiny_model_dir, pairs_file, max_steps=3, activation_checkpointing=1, **LORA)
    for key in ("loss", "rewards/chosen", "grad_norm"):
        assert [r[key] for r in recomputed] == pytest.approx([r[key] for r in plain], rel=1e-5, abs=1e-6), key
