"""Listwise rows on two ranks: torchrun, ZeRO-3, the reference precomputed by both ranks (each scores half
the lists), trains like one rank with the same global batch (same lists in each step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_listwise import _cfg, _train, _write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_ranks_train_lists_like_one_rank_with_the_same_global_batch(tmp_path, tiny_model_dir):
    # K = 3 and no ties in every list: each list has 3 ordered pairs, so the mean over a micro-batch's pairs
    # (listwise_pairs) averaged over 2 ranks of 2 lists is the mean over the step's 4 lists' pairs
    records = [{"prompt": f"What is {a} + {a + 3}?",
                "responses": [f"{a} + {a + 3} = {a + a + 5}.", f"It is {2 * a + 3}.", "I do not know. " * (1 + a % 3)],
                "scores": [1, 2, 0]} for a in range(1, 17)]
    data = str(_write(tmp_path, records, "lists.jsonl"))
    bindir = os.path.dirname(sys.executable)
    cmd = [f"{bindir}/torchrun", "--nproc_per_node", "2", "--master_port", "29661", "trainer/train_dpo.py",
           "--model", tiny_model_dir, "--data", data, "--deepspeed", "ds_configs/zero3.json", "--dtype", "fp32",
           "--loss_type", "listwise_pairs", "--precompute_ref", "true", "--learning_rate", "1e-3", "--weight_decay",
           "0.1", "--max_steps", "4", "--log_interval", "1", "--save_interval", "0", "--max_length", "64",
           "--max_prompt_length", "32", "--beta", "0.5", "--batch_size", "2", "--output_dir", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "16 lists of 3 answers (48 answers), 2 rank(s)" in proc.stdout
    assert "reference log-probs: computed for 16 of the 16 lists trained on" in proc.stdout
    with open(tmp_path / "two/metrics.jsonl") as f:
        two = [json.loads(line) for line in f]
    one = _train(_cfg(tmp_path / "one", tiny_model_dir, data, deepspeed=f"{ROOT}/ds_configs/zero3.json",
                      dtype="fp32", max_steps=4, batch_size=4))
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    # fp32 sums in another order (other padding, two ranks), amplified by Adam's normalisation: ~1e-6 here
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-4), key
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-3)
    assert two[-1]["loss"] < two[0]["loss"]
