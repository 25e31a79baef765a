"""--precompute_ref on listwise rows: the reference's per-answer sums of every list scored once before
training (one (N, Kmax) table, cached) train exactly like the reference scored per batch, with a
reference engine and with LoRA's adapter-off reference, on real DeepSpeed engines."""

from __future__ import annotations

import math

import pytest
import torch

from test_listwise import _cfg, _lists_file, _train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("over", [
    dict(),  # ZeRO-2, a reference engine built only for the pass before training
    dict(lora_r=4, lora_alpha=8.0, learning_rate=1e-2),  # the policy with its adapter off
])
def test_precomputed_listwise_reference_trains_like_the_per_batch_one(tmp_path, tiny_model_dir, capsys, monkeypatch,
                                                                       over):
    cache_dir = tmp_path / "ref_cache"
    monkeypatch.setattr("minidpo.reference.CACHE_DIR", str(cache_dir))
    data = _lists_file(tmp_path, 12)  # 6 lists of K = 3, 6 of K = 4 (42 answers)
    common = dict(dtype="fp32", max_steps=3, **over)
    live = _train(_cfg(tmp_path / "live", tiny_model_dir, data, **common))
    capsys.readouterr()
    pre = _train(_cfg(tmp_path / "pre", tiny_model_dir, data, precompute_ref=True, **common))
    out = capsys.readouterr().out
    assert "minidpo: 12 lists of 3-4 answers (42 answers), 1 rank(s)" in out
    assert "reference log-probs: computed for 12 of the 12 lists trained on (12 in the data)" in out
    assert len(pre) == len(live) == 3
    assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert [r[key] for r in pre] == pytest.approx([r[key] for r in live], rel=1e-5, abs=1e-6), key
    assert pre[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the later steps compare trained rewards
    (cached,) = list(cache_dir.iterdir())
    table = torch.load(cached)
    assert table.shape == (12, 4) and not table.isnan().any()  # one column per answer of the longest list
    assert (table[0::2, 3] == 0).all() and (table[1::2] < 0).all()  # K = 3 lists: the 4th column unused
