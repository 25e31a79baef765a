"""`minidpo doctor` on the tiny demo-shaped model: every check passes on a good setup, a reference that
is not the policy fails the first-loss check with exit 1, and the memory figures are DeepSpeed's
estimators' and the saved activations' exact bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from minidpo.doctor.memory import activation_bytes, model_states_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a fresh process group: not the one an earlier in-process test left in this environment (its port is taken)
ENV = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")},
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for a in range(24):
            f.write(json.dumps({"prompt": f"What is {a} + {a}?", "chosen": f"{a} + {a} = {2 * a}.",
                                "rejected": f"{a} + {a} = {2 * a + 3}."}) + "\n")
    return str(path)


def doctor(*flags, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "minidpo.cli", "doctor", "--dtype", "fp32", "--max_length", "64",
                           "--max_prompt_length", "32", "--batch_size", "4", "--deepspeed",
                           f"{ROOT}/ds_configs/zero2.json", *flags], capture_output=True, text=True, env=ENV, cwd=cwd)


@pytest.mark.slow
def test_doctor_passes_on_a_good_setup_and_fails_on_a_foreign_reference(tmp_path, tiny_model_dir, pairs_file):
    good = doctor("--model", tiny_model_dir, "--data", pairs_file, "--nproc", "2", "--timing_steps", "2")
    assert good.returncode == 0, good.stdout + good.stderr
    out = good.stdout
    assert "ok   data: 24 pairs, 0 red flag(s)" in out
    assert "]]0 + 0 = 0.<|im_end|>" in out  # one pair as trained: the masked prompt, the answer with its EOS
    assert "ok   shared-prompt forward equals two sequences a pair" in out
    assert "ok   fused LM head equals the model's own logits" in out
    assert "ok   memory:" in out and "(ZeRO-2, fp32, full fine-tuning)" in out
    assert "ok   first loss 0.6931, 0.6931 expected at policy == reference" in out
    assert "the run: 3 optimizer steps" in out  # 24 pairs / (4 pairs x 2 ranks)
    assert out.rstrip().endswith("doctor: every check passed")

    from conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    bad = doctor("--model", tiny_model_dir, "--ref_model", str(other), "--data", pairs_file, "--beta", "0.5")
    assert bad.returncode == 1
    assert "FAIL first loss" in bad.stdout and "reference mismatch" in bad.stdout
    assert bad.stdout.rstrip().endswith("doctor: 1 check(s) failed: first loss")


def test_doctor_rejects_bad_input_in_one_line(tmp_path):
    run = doctor("--model", str(tmp_path / "missing"), "--data", str(tmp_path))
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith("minidpo: error: --model")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("stage, ranks, expected", [
    (0, 4, 2 * 1000 + 18 * 1000),  # nothing partitioned
    (1, 4, 2 * 1000 + 18 * 1000 // 4 + 2 * 1000 * 3 // 4),  # ZeRO-1: the 16-bit gradients stay whole
    (2, 4, 2 * 1000 + 18 * 1000 // 4),  # DeepSpeed's ZeRO-2 formula: 16-bit weights + 18 bytes/param / ranks
    (3, 4, 4 * 100 + 18 * 1000 // 4),  # ZeRO-3: the largest layer gathered + everything partitioned
])
def test_model_states_are_deepspeeds_estimates(stage, ranks, expected):
    assert model_states_bytes(1000, 100, stage, ranks, {}) == expected


def test_activation_bytes_counts_each_saved_tensor_once_and_no_weight():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    # Linear 1 keeps its input (3 x 4 floats), ReLU its output (3 x 8), which Linear 2 keeps as its input
    assert activation_bytes(model, x, lambda m, b: m(b).sum()) == 4 * (3 * 4 + 3 * 8)
