"""The experiment trackers besides TensorBoard (`--report_to wandb,trackio,mlflow`): each gets the same
scalar names as metrics.jsonl and TensorBoard, the run config as the run's parameters, and the health
warnings. All run offline, in the run folder unless the user's own setting says otherwise:

    wandb    offline mode (WANDB_MODE, when set, wins), under <output_dir>/wandb; `wandb sync` uploads it
    trackio  Trackio's local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio); `trackio show`
    mlflow   an SQLite store <output_dir>/mlflow.db (MLFLOW_TRACKING_URI, when set, wins); `mlflow ui
             --backend-store-uri sqlite:///<output_dir>/mlflow.db`

Each backend is an optional extra (`pip install -e '.[wandb]'`); a missing one is one line naming the
extra, from the settings' checks before any training (minidpo.config.health).
"""

from __future__ import annotations

import json
import os
import time

PROJECT = "minidpo"


def flat_config(config: dict) -> dict:
    """Settings as the trackers' parameters: scalars as they are, anything else as JSON text."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in config.items()}


def scalars(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker:
    def __init__(self, output_dir: str, config: dict):
        import wandb  # optional extra: only a run that reports to wandb imports it

        self.run = wandb.init(project=PROJECT, name=os.path.basename(os.path.abspath(output_dir)), dir=output_dir,
                              mode=os.environ.get("WANDB_MODE", "offline"), config=flat_config(config))

    def log_scalars(self, row: dict, step: int) -> None:
        self.run.log(scalars(row), step=step)

    def log_warnings(self, warnings: dict, step: int) -> None:
        for name, message in warnings.items():  # the summary keeps the latest; the history has the scalar
            self.run.summary[f"health_warning/{name}"] = f"step {step}: {message}"

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, output_dir: str, config: dict):
        import trackio  # optional extra: only a run that reports to trackio imports it

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=os.path.basename(os.path.abspath(output_dir)),
                                config=flat_config(config), auto_log_gpu=False, auto_log_cpu=False)

    def log_scalars(self, row: dict, step: int) -> None:
        self.run.log(scalars(row), step=step)

    def log_warnings(self, warnings: dict, step: int) -> None:
        from trackio.alerts import AlertLevel  # optional extra, as above

        for name, message in warnings.items():
            self.run.alert(title=f"health/{name}", text=f"step {step}: {message}", level=AlertLevel.WARN)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, output_dir: str, config: dict):
        from mlflow.entities import Param  # optional extra: only a run that reports to mlflow imports it
        from mlflow.tracking import MlflowClient

        folder = os.path.abspath(output_dir)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            PROJECT, artifact_location=os.path.join(folder, "mlflow-artifacts"))
        self.run_id = self.client.create_run(experiment_id, run_name=os.path.basename(folder)).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_scalars(self, row: dict, step: int) -> None:
        from mlflow.entities import Metric  # optional extra, as above

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars(row).items()])

    def log_warnings(self, warnings: dict, step: int) -> None:
        for name, message in warnings.items():
            self.client.set_tag(self.run_id, f"health_warning/{name}", f"step {step}: {message}")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"wandb": WandbTracker, "trackio": TrackioTracker, "mlflow": MlflowTracker}


def open_trackers(names: list[str], output_dir: str, config: dict) -> list:
    """The trackers of `names` besides TensorBoard (which minidpo.metrics writes itself), started for this run."""
    return [BACKENDS[name](output_dir, config) for name in names if name in BACKENDS]
