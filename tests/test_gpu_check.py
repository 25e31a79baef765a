"""`make gpu-check` at toy size on the CPU: the same script a GPU runs, so it is known to work before a
GPU is seen; plus its card table, its checks, and the optimizer choice that needs no CUDA compiler."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from minidpo.bench.gpu_check import card_bf16_peak_tflops, check_variants
from minidpo.config import RunConfig
from minidpo.ds_config import optimizer_name, resolve_ds_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_card_names_find_their_dense_bf16_peak():
    assert card_bf16_peak_tflops("NVIDIA H200") == 989.0
    assert card_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert card_bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert card_bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert card_bf16_peak_tflops("NVIDIA L4") == 121.0 and card_bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert card_bf16_peak_tflops("Some Future Card") is None


def test_variant_check_names_the_variant_and_step():
    ln2 = math.log(2)
    base = {"name": "bf16 z2", "dtype": "bf16", "losses": [ln2, 0.60, 0.55]}
    good = {"name": "bf16 z3", "dtype": "bf16", "losses": [ln2 + 1e-3, 0.61, 0.54]}
    assert check_variants([base, good]) == []
    bad = {"name": "bf16 z3", "dtype": "bf16", "losses": [0.70, 0.65, 0.55]}
    problems = check_variants([base, bad])
    assert any("bf16 z3: step-0 loss 0.70000 is not ln 2" in p for p in problems)
    assert any("bf16 z3: step-1 loss 0.65000 differs from bf16 z2's 0.60000" in p for p in problems)
    # precisions are compared among themselves: fp16 against the first fp16 variant only
    fp16 = {"name": "fp16 z2", "dtype": "fp16", "losses": [ln2, 0.63, 0.58]}
    assert check_variants([base, fp16]) == []


def test_variant_check_compares_step0_logps_and_skips_what_rounding_or_loss_scaling_moves():
    ln2 = math.log(2)
    base = {"name": "bf16 packed", "dtype": "bf16", "losses": [ln2, 0.72, 0.69, 0.88], "step0_logps": [-1200.0, -1190.0]}
    # later steps drift apart in bf16 (measured on an H200): reported, not a failure
    drifted = {"name": "bf16 plain", "dtype": "bf16", "losses": [ln2, 0.725, 0.72, 0.78], "step0_logps": [-1200.5, -1189.0]}
    assert check_variants([base, drifted]) == [] and drifted["drift"] == pytest.approx(0.10)
    # a packed forward that scored other tokens: step-0 log-probs far apart although both losses are ln 2
    wrong = {"name": "bf16 plain", "dtype": "bf16", "losses": [ln2, 0.72, 0.69, 0.88], "step0_logps": [-1150.0, -1190.0]}
    assert check_variants([base, wrong]) == ["bf16 plain: step-0 log pi(chosen) -1150.0000 differs from "
                                              "bf16 packed's -1200.0000"]
    # fp16 loss scaling skipped a step: no loss logged there, nothing compared there
    fp16 = {"name": "fp16 a", "dtype": "fp16", "losses": [ln2, 0.73, None, 0.68]}
    fp16b = {"name": "fp16 b", "dtype": "fp16", "losses": [ln2, 0.731, 0.70, 0.69]}
    assert check_variants([fp16, fp16b]) == []
    skipped0 = {"name": "fp16 c", "dtype": "fp16", "losses": [None, 0.73, 0.70, 0.69]}
    assert check_variants([fp16, skipped0]) == ["fp16 c: step-0 loss none (step skipped) is not ln 2 = 0.69315"]


def test_gpu_runs_torch_fused_adamw_unless_deepspeed_ops_are_prebuilt():
    """Without a prebuilt FusedAdam op (as in this venv), a GPU config must not ask DeepSpeed to
    JIT-build one: torch's fused AdamW instead. On a CPU, torch's AdamW, unfused."""
    from deepspeed.git_version_info import installed_ops

    cfg = RunConfig()
    gpu = resolve_ds_config(f"{ROOT}/ds_configs/zero2.json", cfg, 1, on_cpu=False)
    cpu = resolve_ds_config(f"{ROOT}/ds_configs/zero2.json", cfg, 1, on_cpu=True)
    assert cpu["optimizer"]["params"]["torch_adam"] is True and "fused" not in cpu["optimizer"]["params"]
    assert optimizer_name(cpu) == "torch.optim.AdamW"
    if not installed_ops.get("fused_adam"):
        assert gpu["optimizer"]["params"]["torch_adam"] is True and gpu["optimizer"]["params"]["fused"] is True
        assert optimizer_name(gpu) == "torch.optim.AdamW (fused)"
    offload = resolve_ds_config(f"{ROOT}/ds_configs/zero3_offload.json", cfg, 1, on_cpu=False)
    assert "torch_adam" not in offload["optimizer"]["params"]
    assert optimizer_name(offload) == "DeepSpeedCPUAdam (optimizer offload)"


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_on_a_cpu(tmp_path):
    out = tmp_path / "gpu-check"
    cmd = [sys.executable, "-m", "minidpo.bench.gpu_check", "--size", "toy", "--steps", "2", "--bench-pairs", "8",
           "--threads", "1", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK")}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fp16: skipped (DeepSpeed refuses fp16 on a CPU)" in done.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["problems"] == [] and report["size"] == "toy"
    names = [v["name"] for v in report["variants"]]
    assert names == ["fp32, ZeRO-2, shared prompt on", "fp32, ZeRO-2, shared prompt off",
                     "fp32, ZeRO-3, shared prompt on", "fp32, ZeRO-3, shared prompt off"]
    # the packed and the plain forward against eager fp32 attention, each answer alone
    assert set(report["logps_vs_eager_fp32"]["fp32"]) == {"packed", "plain"}
    assert max(report["logps_vs_eager_fp32"]["fp32"].values()) < 0.01
    first = report["variants"][0]["losses"]
    assert len(first) == 2 and first[0] == pytest.approx(math.log(2), abs=1e-5) and first[1] != first[0]
    for v in report["variants"]:
        assert v["losses"] == pytest.approx(first, abs=1e-4)
        assert v["pairs_per_s"] > 0 and v["tokens_per_s"] > v["pairs_per_s"] and v["peak_memory_gb"] > 0.1
    assert report["optimizer"] == "torch.optim.AdamW"
    assert report["attention"]["implementation"] == "sdpa"
    assert report["attention"]["packed_attention"] == "two causal sdpa calls per layer"
    assert any("scaled_dot_product" in op for op in report["attention"]["packed"])
    bench = report["bench"]
    assert set(bench["results"]) == {"minidpo", "trl"} and bench["numerics_check"] == "losses agree"
    assert bench["results"]["minidpo"]["mfu_vs_card_bf16_peak"] is None  # no card on a CPU
    assert 0 < bench["results"]["minidpo"]["mfu_vs_measured_peak"] < 2
    assert report["peak_tflops"]["measured_fp32_matmul"] > 0
    assert bench["minidpo_vs_trl"]["pairs_per_s"] > 0
