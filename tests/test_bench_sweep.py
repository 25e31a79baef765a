"""The bench's scaling sweep at toy size: workloads that scale with max length, the same tokens per
step, a table, the growth ratios and the two plots; a point that fails is reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minidpo.bench.sweep import growth, markdown, sweep_workload
from minidpo.bench.workload import generate_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_workloads_scale_with_max_length():
    short, long = sweep_workload("tiny", 512, 64), sweep_workload("tiny", 2048, 64)
    assert (short.prompt_median, short.response_median, short.response_max) == (64, 96, 384)  # the bench's
    assert (long.prompt_median, long.response_median, long.response_max) == (256, 384, 1536)
    for w in (short, long):
        pairs = generate_pairs(w)
        assert all(len(p) + max(len(c), len(r)) <= w.max_length for p, c, r in pairs)
    median = lambda w: sorted(len(c) for _, c, _ in generate_pairs(w))[32]  # noqa: E731
    assert 3 <= median(long) / median(short) <= 5


def test_growth_and_table_by_hand():
    points = [
        {"model": "m", "trainer": "minidpo", "max_length": 512, "batch_size": 8, "ok": True, "pairs_per_s": 2.0,
         "useful_tokens_per_s": 1000.0, "peak_memory_gb": 1.0, "padding_fraction": 0.05},
        {"model": "m", "trainer": "minidpo", "max_length": 4096, "batch_size": 1, "ok": True, "pairs_per_s": 0.2,
         "useful_tokens_per_s": 600.0, "peak_memory_gb": 3.0, "padding_fraction": 0.01},
        {"model": "m", "trainer": "trl", "max_length": 4096, "batch_size": 1, "ok": False,
         "error": "bench: trl failed (exit -9)"},
    ]
    g = growth(points)
    assert g == {"m / minidpo": {"lengths": [512, 4096], "tokens_per_s_ratio": 0.6, "peak_memory_ratio": 3.0}}
    table = markdown({"settings": {"tokens_per_step": 4096, "steps": 8, "dtype": "fp32", "threads": 2},
                      "points": points, "growth": g})
    assert "| m | 4096 | 1 | trl | did not run: bench: trl failed (exit -9) |" in table
    assert "| m | 512 | 8 | minidpo | 2.00 | 1000 | 1.00 GB | 5% |" in table
    assert "tokens/s x0.60, peak memory x3.00" in table


@pytest.mark.slow
def test_sweep_runs_at_toy_size_and_writes_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "minidpo.bench", "--sweep", "--sweep-models", "tiny", "--sweep-lengths", "64,128",
           "--tokens-per-step", "128", "--sweep-steps", "2", "--sweep-trainers", "minidpo", "--threads", "1",
           "--dtype", "fp32", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    points = report["points"]
    assert [(p["max_length"], p["batch_size"], p["pairs"]) for p in points] == [(64, 2, 4), (128, 1, 2)]
    for p in points:  # the same max-length tokens per step; useful tokens/s from the workload's own count
        assert p["ok"] and p["batch_size"] * p["max_length"] == 128
        assert p["useful_tokens_per_s"] == pytest.approx(p["useful_tokens"] / p["seconds"], rel=1e-6)
        assert p["peak_memory_gb"] > 0.1 and 0 <= p["padding_fraction"] < 0.5
    assert set(report["growth"]) == {"tiny / minidpo"}
    for name in ("sweep_tokens_per_s.png", "sweep_peak_memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| tiny | 128 | 1 | minidpo |" in (out / "sweep.md").read_text()
