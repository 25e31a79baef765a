"""TR-DPO (`sync_ref_model`) on real DeepSpeed engines: a hard sync makes the reference score like the policy,
a soft one averages the weights, under ZeRO 0-3; with LoRA and no reference model the reference is a twin
adapter that a sync overwrites while the base stays frozen; a resumed run equals the uninterrupted one (the
synced reference travels in the checkpoint); and the settings that do not fit are one-line errors."""

from __future__ import annotations

import os
import shutil
import sys
import types

import pytest
import torch

from minidpo.config import RunConfig
from minidpo.errors import ConfigError
from test_lora import LORA, logps, lora_engine, tiny_batch, train_a_little
from test_training import ROOT, losses, pairs_file, run  # noqa: F401 (pairs_file: fixture)

pytestmark = pytest.mark.slow
WEIGHT = "model.layers.0.mlp.up_proj.weight"


def engines(model_dir, stage: int):
    """A full fine-tuning policy engine and its reference engine, as train() builds them (fp32, CPU)."""
    from minidpo.distributed import setup_distributed
    from minidpo.ds_config import reference_ds_config, resolve_ds_config
    from minidpo.engine import build_policy_engine, build_reference_engine
    from minidpo.models import load_causal_lm
    from minidpo.schedule import warmup_cosine

    setup_distributed()
    cfg = RunConfig(model=model_dir, batch_size=4, learning_rate=1e-2, dtype="fp32")
    ds = resolve_ds_config(f"{ROOT}/ds_configs/zero{stage}.json", cfg, 1, on_cpu=True)
    policy = build_policy_engine(load_causal_lm(model_dir, trainable=True), ds, warmup_cosine(10, 0, 1.0))
    reference = build_reference_engine(load_causal_lm(model_dir, trainable=False), reference_ds_config(ds))
    return policy, reference


def full(param) -> torch.Tensor:
    """A parameter's full value (gathered under ZeRO-3)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([param]):
        return param.data.detach().clone()


def sync_settings(**over) -> RunConfig:
    return RunConfig(**{"sync_ref_model": True, "ref_model_sync_steps": 2, **over})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_soft_and_hard_sync_of_a_reference_engine(tiny_model_dir, pairs_file, stage):
    from minidpo.reference import reference_sync

    batch, _ = tiny_batch(tiny_model_dir, pairs_file, packed=True)
    policy, reference = engines(tiny_model_dir, stage)
    train_a_little(policy, batch)
    before = logps(reference, batch)
    assert not torch.allclose(before, logps(policy, batch), atol=1e-3)  # the policy moved away
    ref_param = dict(reference.module.named_parameters())[WEIGHT]
    policy_param = dict(policy.module.named_parameters())[WEIGHT]
    ref_before, policy_now = full(ref_param), full(policy_param)
    assert not torch.equal(ref_before, policy_now)

    soft = reference_sync(sync_settings(ref_model_mixup_alpha=0.5), policy, reference)
    soft.after_step(3)  # not a multiple of ref_model_sync_steps: nothing happens
    assert torch.equal(full(ref_param), ref_before)
    soft.after_step(4)
    assert torch.allclose(full(ref_param), 0.5 * policy_now + 0.5 * ref_before, rtol=0, atol=1e-7)
    assert torch.equal(full(policy_param), policy_now)  # the policy is only read

    hard = reference_sync(sync_settings(ref_model_mixup_alpha=1.0), policy, reference)
    hard.after_step(2)
    assert torch.equal(full(ref_param), policy_now)
    assert torch.equal(logps(reference, batch), logps(policy, batch))  # the reference now scores as the policy


def test_a_reference_of_another_architecture_is_refused(tmp_path, tiny_model_dir):
    from conftest import build_tiny_model_dir
    from minidpo.models import load_causal_lm
    from minidpo.reference import reference_sync

    other = build_tiny_model_dir(tmp_path / "wide", hidden=48)
    policy = types.SimpleNamespace(module=load_causal_lm(tiny_model_dir, trainable=True))
    reference = types.SimpleNamespace(module=load_causal_lm(str(other), trainable=False))
    with pytest.raises(ConfigError, match="--sync_ref_model: the reference model .* does not have the policy's "
                                          "parameters \\(first mismatch: model.embed_tokens.weight\\)") as info:
        reference_sync(sync_settings(model=tiny_model_dir, ref_model=str(other)), policy, reference)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_reference_is_a_twin_adapter_that_a_sync_overwrites(tiny_model_dir, pairs_file, stage):
    from safetensors.torch import load_file

    from minidpo.lora import AdapterOffReference, POLICY, REFERENCE
    from minidpo.models import load_causal_lm
    from minidpo.reference import reference_sync

    batch, _ = tiny_batch(tiny_model_dir, pairs_file, packed=True)
    settings = dict(sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=1)
    engine = lora_engine(tiny_model_dir, stage=stage, **settings)
    assert set(engine.module.peft_config) == {POLICY, REFERENCE}
    frozen = [n for n, p in engine.module.named_parameters() if not p.requires_grad]
    assert all(".lora_" not in n or f".{REFERENCE}." in n for n in frozen)  # the policy's adapter trains
    reference = AdapterOffReference(engine)
    base = logps(load_causal_lm(tiny_model_dir, trainable=False).eval(), batch)
    assert torch.equal(logps(reference, batch), base)  # the twin starts as the policy's adapter: B = 0
    train_a_little(engine, batch)
    assert torch.equal(logps(reference, batch), base)  # training never touches the twin
    sync = reference_sync(RunConfig(lora_r=4, **settings), engine, reference)
    assert len(sync.pairs) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    sync.after_step(1)
    synced = logps(reference, batch)
    assert not torch.allclose(synced, base, atol=1e-3)  # the reference changed...
    assert torch.equal(synced, logps(engine, batch))  # ...into the policy
    train_a_little(engine, batch, steps=1)  # the policy trains on; the reference stays where the sync put it
    assert torch.equal(logps(reference, batch), synced)
    assert engine.module.training and all(p.requires_grad for n, p in engine.module.named_parameters()
                                          if f".{POLICY}." in n)
    weights = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    prefix = "base_model.model."
    for name, param in engine.module.named_parameters():
        if ".lora_" not in name and name[len(prefix):].replace(".base_layer", "") in weights:
            assert torch.equal(full(param), weights[name[len(prefix):].replace(".base_layer", "")]), name


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resume_after_a_sync_equals_the_uninterrupted_run(tmp_path, tiny_model_dir, pairs_file, kind):
    """Syncs at steps 2 and 4, a checkpoint at 3: the resumed run must start from the reference of step 2.
    For a reference engine, only reference.pt carries it (removed, the resumed run differs: the check can
    fail); LoRA's twin adapter is a frozen parameter of the policy engine, which DeepSpeed's own checkpoint
    restores too (ZeRO-3 here), so there the file is a second copy."""
    if kind == "full":
        over = dict(sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=2, dtype="fp32")
    else:
        over = dict(sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=2,
                    deepspeed=f"{ROOT}/ds_configs/zero3.json", **LORA)
    plain = {k: v for k, v in over.items() if not k.startswith(("sync_", "ref_model_"))}
    uninterrupted = run(tmp_path, "full", tiny_model_dir, pairs_file, save_interval=3, keep_checkpoints=3, **over)
    without_sync = run(tmp_path, "plain", tiny_model_dir, pairs_file, **plain)
    assert losses(uninterrupted)[:2] == pytest.approx(losses(without_sync)[:2], abs=1e-7)
    assert all(abs(a - b) > 1e-5 for a, b in zip(losses(uninterrupted)[2:], losses(without_sync)[2:]))
    checkpoint = tmp_path / "full/checkpoints/step_00000003"
    assert (checkpoint / "reference.pt").is_file()
    for name, keep_reference in (("resumed", True), ("lost", False)):
        shutil.copytree(checkpoint, tmp_path / name / "checkpoints/step_00000003")
        (tmp_path / name / "checkpoints/latest").write_text("step_00000003")
        if not keep_reference:
            os.remove(tmp_path / name / "checkpoints/step_00000003/reference.pt")
        rows = run(tmp_path, name, tiny_model_dir, pairs_file, resume=True, **over)
        assert [r["step"] for r in rows] == [4, 5, 6]
        if keep_reference or kind == "lora":
            assert losses(rows) == pytest.approx(losses(uninterrupted)[3:], abs=1e-6)
            assert [r["grad_norm"] for r in rows] == pytest.approx([r["grad_norm"] for r in uninterrupted[3:]],
                                                                   rel=1e-5)
        else:
            assert losses(rows)[0] != pytest.approx(losses(uninterrupted)[3], abs=1e-5)


def test_two_ranks_zero3_sync_like_one_rank(tmp_path, tiny_model_dir, pairs_file):
    """torchrun, ZeRO-3: the gathered sync and the reference's save are collective; a checkpoint at the
    sync step holds the synced reference, and the curve is the one-rank run's."""
    from safetensors.torch import load_file
    from test_training import _launch, read_metrics

    sync = dict(sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=2)
    args = ["--model", tiny_model_dir, "--data", pairs_file, "--deepspeed", "ds_configs/zero3.json", "--dtype", "fp32",
            "--learning_rate", "1e-3", "--max_steps", "4", "--log_interval", "1", "--save_interval", "2",
            "--max_length", "64", "--max_prompt_length", "32", "--beta", "0.5", "--batch_size", "2",
            "--output_dir", str(tmp_path / "two"), *[str(x).lower() for k, v in sync.items() for x in (f"--{k}", v)]]
    bindir = os.path.dirname(sys.executable)
    _launch([f"{bindir}/torchrun", "--nproc_per_node", "2", "--master_port", "29621", "trainer/train_dpo.py"] + args,
            tmp_path)
    one = run(tmp_path, "one", tiny_model_dir, pairs_file, deepspeed=f"{ROOT}/ds_configs/zero3.json", dtype="fp32",
              max_steps=4, batch_size=4, save_interval=2, **sync)
    two = read_metrics(tmp_path / "two")
    assert losses(two) == pytest.approx(losses(one), abs=1e-3)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-3)
    saved = [torch.load(tmp_path / name / "checkpoints/step_00000002/reference.pt", weights_only=True)
             for name in ("one", "two")]
    assert saved[0].keys() == saved[1].keys() and WEIGHT in saved[0]
    initial = load_file(os.path.join(tiny_model_dir, "model.safetensors"))[WEIGHT]
    assert saved[1][WEIGHT].shape == initial.shape  # the full tensor, gathered by rank 0
    assert (saved[1][WEIGHT] - initial).abs().mean() > 4e-4  # half of two Adam steps of ~1e-3: the sync happened
    assert (saved[1][WEIGHT] - saved[0][WEIGHT]).abs().mean() < 2e-5  # as on one rank


@pytest.mark.parametrize("over, message", [
    (dict(sync_ref_model=True, precompute_ref=True), "--precompute_ref cannot be used with --sync_ref_model: the "
                                                     "reference changes during training"),
    (dict(ref_model_mixup_alpha=0.9), "--ref_model_mixup_alpha only applies with --sync_ref_model true"),
    (dict(ref_model_sync_steps=64), "--ref_model_sync_steps only applies with --sync_ref_model true"),
    (dict(sync_ref_model=True, ref_model_mixup_alpha=0.0), "--ref_model_mixup_alpha must be in (0, 1]"),
    (dict(sync_ref_model=True, ref_model_sync_steps=0), "--ref_model_sync_steps must be >= 1"),
    (dict(sync_ref_model=True, loss_type="simpo"), "--sync_ref_model does not apply: loss_type simpo is "
                                                   "reference-free"),
    (dict(sync_ref_model=True, lora_r=4), "--ref_model_mixup_alpha 0.6: with LoRA the reference is a copy of the "
                                          "adapter"),
    (dict(sync_ref_model=True, ref_model_mixup_alpha=1.0, lora_r=4, ref_model="MODEL"),
     "--sync_ref_model with LoRA and --ref_model is not supported"),
])
def test_settings_that_do_not_fit_are_one_line_errors(tmp_path, tiny_model_dir, over, message):
    from minidpo.run import check_settings

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    over = {k: tiny_model_dir if v == "MODEL" else v for k, v in over.items()}
    cfg = RunConfig(model=tiny_model_dir, data=str(data), output_dir=str(tmp_path / "out"),
                    deepspeed=os.path.join(ROOT, "ds_configs/zero2.json"), **over)
    escaped = "".join("\\" + c if c in "[]().*+?" else c for c in message)
    with pytest.raises(ConfigError, match=escaped) as info:
        check_settings(cfg)
    assert "\n" not in str(info.value)
    check_settings(RunConfig(**{**cfg.to_dict(), **{k: getattr(RunConfig, k) for k in over}}))  # defaults pass
