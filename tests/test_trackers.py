"""`--report_to wandb,trackio,mlflow` on a real (tiny) run, offline: each backend is read back from what it
stored and holds the same scalars as metrics.jsonl, the run config as parameters, and the health warning
the run tripped. A missing package is one line naming the extra."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import struct
import subprocess
import sys

import pytest

from minidpo.config import RunConfig, validate
from minidpo.config.health import TRACKER_PACKAGES
from minidpo.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wandb_records(path: str) -> list:
    """The protobuf records of an offline wandb run file (.wandb: a 7-byte header, then LevelDB-log-style
    32 KiB blocks of chunks with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, out = open(path, "rb").read(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def items(updates) -> dict:
    """{key: value} of a record's items (a key may come whole or as its nested parts)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}


@pytest.mark.slow
def test_a_run_reports_to_wandb_trackio_and_mlflow_offline(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {a}?", "chosen": f"{2 * a}.",
                                        "rejected": f"{2 * a + 1}."}) + "\n" for a in range(8)))
    out = tmp_path / "run"
    # a fresh process group: not the one an earlier in-process test left in this environment (its port is taken)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "MLFLOW_")) and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRACKIO_DIR=str(tmp_path / "trackio"), PYTHONPATH=ROOT)
    # learning rate 1e-12: dead learning fires at step 2 (health_patience 2), a warning every tracker must hold
    done = subprocess.run([sys.executable, "-m", "minidpo.train", "--model", tiny_model_dir, "--data", str(data),
                           "--output_dir", str(out), "--deepspeed", f"{ROOT}/ds_configs/zero2.json", "--dtype", "fp32",
                           "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "2", "--max_steps", "3",
                           "--log_interval", "1", "--save_interval", "0", "--learning_rate", "1e-12", "--beta", "0.25",
                           "--health_patience", "2", "--report_to", "wandb,trackio,mlflow"],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    losses = [r["loss"] for r in rows]
    assert [r["health/dead_learning"] for r in rows] == [0, 1, 1]
    assert not (out / "tensorboard").exists()  # not asked for

    # wandb: offline, in the run folder
    (path,) = glob.glob(str(out / "wandb/offline-run-*/run-*.wandb"))
    records = wandb_records(path)
    history = [items(r.history.item) for r in records if r.HasField("history")]
    assert [h["loss"] for h in history] == pytest.approx(losses)
    assert [h["_step"] for h in history] == [1, 2, 3]
    assert [h["health/dead_learning"] for h in history] == [0, 1, 1]
    config = {k: v for r in records if r.HasField("run") for k, v in items(r.run.config.update).items()}
    assert config["beta"] == 0.25 and config["report_to"] == "wandb,trackio,mlflow"
    summary = {k: v for r in records if r.HasField("summary") for k, v in items(r.summary.update).items()}
    assert summary["health_warning/dead_learning"].startswith("step 2: dead learning")

    # trackio: its local store
    db = sqlite3.connect(tmp_path / "trackio/minidpo.db")
    logged = [json.loads(m) for (m,) in db.execute("SELECT metrics FROM metrics ORDER BY step")]
    assert [m["loss"] for m in logged] == pytest.approx(losses)
    (config,) = [json.loads(c) for (c,) in db.execute("SELECT config FROM configs")]
    assert config["beta"] == 0.25
    (alert,) = db.execute("SELECT title, text FROM alerts").fetchall()
    assert alert[0] == "health/dead_learning" and alert[1].startswith("step 2: dead learning")

    # mlflow: an SQLite store in the run folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("minidpo").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == pytest.approx(losses)
    assert run.data.params["beta"] == "0.25" and run.data.params["loss_type"] == "sigmoid"
    assert run.data.tags["health_warning/dead_learning"].startswith("step 2: dead learning")
    assert {"rewards/margins", "grad_norm", "health/dead_learning"} <= set(run.data.metrics)


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, tiny_model_dir, monkeypatch):
    cfg = RunConfig(model=tiny_model_dir, data=tiny_model_dir, deepspeed=f"{ROOT}/ds_configs/zero2.json",
                    output_dir=str(tmp_path), report_to="tensorboard,wandb")
    validate(cfg)
    monkeypatch.setitem(TRACKER_PACKAGES, "wandb", "wandb_is_not_installed")  # as on a machine without it
    with pytest.raises(ConfigError, match=r"--report_to wandb: the wandb_is_not_installed package is not installed; "
                                          r"install it with pip install -e '\.\[wandb\]'"):
        validate(cfg)
    cfg.report_to = "tensorboard,comet"
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        validate(cfg)
