"""The demo end to end at toy size: generated data -> init model -> SFT -> DPO -> evaluation.
The demo's targets (accuracy >= 0.9 ...) belong to `make train`; this checks every figure is computed
and in range, and that SFT and DPO really changed the weights."""

import json
import math
import os

import pytest

from minidpo.config import RunConfig
from minidpo.demo.generate import AXES, read_jsonl, write_dataset
from minidpo.demo.judge import judge_heldout
from minidpo.demo.presets import corpus_from_records, make_init_model
from minidpo.eval import evaluate
from minidpo.config import SFTConfig
from minidpo.sft import train_sft
from minidpo.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def test_sft_then_dpo_then_eval(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, n_train=96, n_heldout=16)
    init = make_init_model(tmp_path / "init", "demo", corpus_from_records(read_jsonl(data / "train.jsonl")))
    common = dict(data=str(data / "train.jsonl"), deepspeed=f"{ROOT}/ds_configs/zero2.json", dtype="fp32",
                  max_length=192, max_prompt_length=96, batch_size=8, log_interval=2)

    sft = train_sft(SFTConfig(model=init, output_dir=str(tmp_path / "sft"), max_steps=6, **common))
    assert sft["steps"] == 6
    dpo = train(RunConfig(model=sft["export"], output_dir=str(tmp_path / "dpo"), max_steps=4,
                          learning_rate=5e-4, **common))
    rows = [json.loads(line) for line in open(tmp_path / "dpo/metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4]
    # a healthy run: no health check fires (docs/health.md), no data red flag either
    assert json.loads((tmp_path / "dpo/summary.json").read_text())["health"] == []

    result = evaluate(sft["export"], dpo["export"], data / "heldout.jsonl", tmp_path / "eval", beta=0.1,
                      n_generate=8, max_new_tokens=24, n_kl=4, kl_max_new_tokens=16, batch_size=8,
                      judge=judge_heldout)
    assert (tmp_path / "eval/eval.json").is_file() and (tmp_path / "eval/eval.md").is_file()
    assert "No health warning fired during training" in (tmp_path / "eval/eval.md").read_text()  # the run's summary
    assert "NaN" not in json.dumps(result)
    pref = result["preference"]
    assert pref["n_pairs"] == 16
    assert 0.0 <= pref["implicit_reward_accuracy"] <= 1.0
    for model in ("sft", "dpo"):
        assert 0.0 <= pref["logp_accuracy"][model] <= 1.0
    judged = result["judge"]
    assert judged["all"]["n"] == 8
    for axis in AXES:
        assert judged[axis]["n"] == 2, axis  # stratified over the axes
        assert 0 <= judged[axis]["dpo_pass"] <= judged[axis]["n"]
    kl = result["kl"]
    assert kl["n_samples"] == 4 and math.isfinite(kl["kl_sequence"])
    assert kl["kl_sequence"] != 0.0  # DPO moved away from SFT
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "eval"))

    # the app on the two exports: both columns answer the app's harmful example prompt, differently
    from app.handlers import Comparer  # gradio: heavy to import, only this last step needs it
    from app.examples import EXAMPLES

    harmful = EXAMPLES[1][0]
    assert "bomb" in harmful
    comparer = Comparer.from_dirs(sft["export"], dpo["export"], device="cpu", votes_path=tmp_path / "votes.jsonl")
    *_, last = comparer.compare(harmful, "", 24, 0.7, 0.95, 0, 1.0, 0)
    sft_text, dpo_text, _, _, status = last
    assert status.startswith("**Done.**") and sft_text and dpo_text
    assert sft_text != dpo_text
