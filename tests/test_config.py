"""Run config and DeepSpeed JSON resolution: auto fields, contradictions, early one-line errors."""

import json
import math
import os
import subprocess
import sys

import pytest

from minidpo.config import RunConfig, parse_config, validate
from minidpo.ds_config import reference_ds_config, resolve_ds_config
from minidpo.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(p)


def test_auto_fields_are_filled_from_the_run_config():
    cfg = RunConfig(batch_size=3, grad_accum=5, max_grad_norm=0.5, learning_rate=2e-5, weight_decay=0.01, dtype="bf16")
    ds = resolve_ds_config(os.path.join(ROOT, "ds_configs/zero2.json"), cfg, world_size=2, on_cpu=True)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 30
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["optimizer"]["params"]["lr"] == 2e-5 and ds["optimizer"]["params"]["weight_decay"] == 0.01
    assert ds["optimizer"]["params"]["torch_adam"] is True  # no CUDA fused Adam on a CPU
    assert ds["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3", "zero3_offload"])
def test_every_shipped_config_resolves(name):
    ds = resolve_ds_config(os.path.join(ROOT, f"ds_configs/{name}.json"), RunConfig(dtype="fp32"), 1, on_cpu=False)
    assert "auto" not in json.dumps(ds)
    ref = reference_ds_config(ds)
    assert "optimizer" not in ref
    assert ref["zero_optimization"]["stage"] == (3 if name.startswith("zero3") else 0)


def test_contradiction_names_file_field_and_flag(tmp_path):
    path = write(tmp_path, "ds.json", {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1}})
    with pytest.raises(ConfigError, match=r"ds.json: train_micro_batch_size_per_gpu=8 contradicts .*--batch_size=4"):
        resolve_ds_config(path, RunConfig(batch_size=4), 1, on_cpu=True)
    path = write(tmp_path, "ds2.json", {"bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"\[bf16\]: enabled=True contradicts .*--dtype"):
        resolve_ds_config(path, RunConfig(dtype="fp32"), 1, on_cpu=True)


def test_fp16_on_cpu_says_use_bf16():
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU.*use --dtype bf16"):
        resolve_ds_config(os.path.join(ROOT, "ds_configs/zero2.json"), RunConfig(dtype="fp16"), 1, on_cpu=True)


def test_file_then_flags(tmp_path):
    yaml_path = write(tmp_path, "run.yaml", "beta: 0.3\nbatch_size: 2\nadam_betas: [0.9, 0.95]\n")
    cfg = parse_config(["--config", yaml_path, "--batch_size", "6", "--group_by_length", "false"])
    assert (cfg.beta, cfg.batch_size, cfg.adam_betas, cfg.group_by_length) == (0.3, 6, (0.9, 0.95), False)
    bad = write(tmp_path, "bad.json", {"bta": 0.1})
    with pytest.raises(ConfigError, match="unknown setting.*bta"):
        parse_config(["--config", bad])


def _valid(tmp_path, tiny_model_dir, **over):
    data = write(tmp_path, "d.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    kw = dict(model=tiny_model_dir, data=data, output_dir=str(tmp_path / "out"),
              deepspeed=os.path.join(ROOT, "ds_configs/zero2.json"))
    kw.update(over)
    return RunConfig(**kw)


def test_validate_names_the_culprit(tmp_path, tiny_model_dir):
    validate(_valid(tmp_path, tiny_model_dir))
    cases = [
        (dict(model=str(tmp_path / "nope")), "--model .*nope: not a folder"),
        (dict(ref_model=str(tmp_path)), "--ref_model .*: no config.json"),
        (dict(loss_type="kpo"), "unknown loss_type 'kpo'"),
        (dict(data=str(tmp_path / "missing.jsonl")), "--data .*missing.jsonl: no such file"),
        (dict(dtype="fp8"), "--dtype fp8"),
    ]
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate(_valid(tmp_path, tiny_model_dir, **over))


def test_unwritable_output_dir(tmp_path, tiny_model_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--output_dir .*cannot create it"):
        validate(_valid(tmp_path, tiny_model_dir, output_dir=str(blocker / "run")))


def test_cli_bad_input_is_one_line_before_heavy_work(tmp_path, tiny_model_dir):
    cfg = _valid(tmp_path, tiny_model_dir)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "trainer/train_dpo.py"), "--model", str(tmp_path / "missing"),
         "--data", cfg.data, "--output_dir", cfg.output_dir, "--deepspeed", cfg.deepspeed],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --model {tmp_path / 'missing'}: not a folder"]


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    from minidpo.schedule import warmup_cosine

    ratio = warmup_cosine(total_steps=12, warmup_steps=4, min_lr_ratio=0.1)
    assert [ratio(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert ratio(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert ratio(12) == pytest.approx(0.1) and ratio(50) == pytest.approx(0.1)
    assert warmup_cosine(10, 0, 0.0)(0) == pytest.approx(1.0)  # no warmup: the first step has the full lr


def test_sft_config_has_no_dpo_settings_and_help_is_grouped(tmp_path):
    from minidpo.config import SFTConfig, build_arg_parser

    sft_flags = {flag for action in build_arg_parser(SFTConfig)._actions for flag in action.option_strings}
    assert {"--learning_rate", "--save_interval", "--resume", "--max_tokens_per_batch"} <= sft_flags
    for dpo_only in ("--beta", "--loss_type", "--lora_r", "--ref_model", "--precompute_ref", "--rpo_alpha"):
        assert dpo_only not in sft_flags
    assert "The preference objective" in build_arg_parser(RunConfig).format_help()  # flags listed by section
    bad = write(tmp_path, "sft.yaml", "beta: 0.1\n")
    with pytest.raises(ConfigError, match="unknown DPO-only setting.*beta"):
        parse_config(["--config", bad], SFTConfig)


def test_the_resume_fingerprint_follows_the_sections():
    from minidpo.checkpoint import fingerprint_keys

    keys = fingerprint_keys(RunConfig)
    assert keys[:4] == ["model", "data", "ref_model", "world_size"]  # content hashes first
    for same in ("beta", "loss_type", "batch_size", "learning_rate", "adam_betas", "lora_r", "max_length", "seed"):
        assert same in keys
    for free in ("output_dir", "save_interval", "resume", "dist_timeout", "precompute_ref", "tokenizer"):
        assert free not in keys
