"""The health checks' thresholds and the trackers (minidpo.health, minidpo.trackers, docs/health.md).

Every field may change on resume: none of them changes what is trained."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from minidpo.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
TRACKER_PACKAGES = {"wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}  # the extra of the same name


def _free(default, help: str):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help, "resume": "free"})


@dataclass
class HealthSettings:
    """Health checks and trackers (docs/health.md): warnings with their likely cause, and where metrics go."""

    health: bool = _free(True, "on | off: the live health checks at each log interval and the data red flags "
                         "at load (docs/health.md)")
    health_patience: int = _free(3, "log intervals a trend must last before displacement, saturation, length or "
                                 "dead-learning warnings fire")
    health_repeat: int = _free(10, "a warning still firing is printed again every this many log intervals")
    health_first_loss_tol: float = _free(0.02, "reference mismatch: the first step's loss may differ this much from "
                                         "its value at policy == reference (ln 2 for DPO) ...")
    health_first_drift: float = _free(0.05, "... and its chosen answers may be this many nats per token from the "
                                      "reference (rounding of bf16 / a precomputed reference stays far below)")
    health_displacement: float = _free(0.05, "likelihood displacement: chosen answers' log-ratio to the reference "
                                       "below minus this (nats per token) while both rewards fall")
    health_accuracy: float = _free(0.98, "saturation: reward accuracy at or above this ...")
    health_kl_per_token: float = _free(0.5, "... with margins growing and chosen answers this many nats per token "
                                       "from the reference")
    health_length_gap: float = _free(0.3, "length exploitation: reward accuracy exceeds the accuracy of the same "
                                     "log-ratios taken per token by this much (the margins come from length)")
    health_dead_margin: float = _free(1e-3, "dead learning: after warmup, the mean reward margin (what moves the "
                                      "loss) stays below this ...")
    health_dead_grad_norm: float = _free(1e-8, "... or the gradient norm is below this")
    health_truncated_share: float = _free(0.2, "data red flag: more than this share of the pairs truncated")
    report_to: str = _free("tensorboard", "where metrics go: any of tensorboard, wandb, trackio, mlflow "
                           "(comma-separated; 'none' for metrics.jsonl only); each runs offline in the run folder")


def report_to_names(value: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' or '' -> []."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    return [] if names == ["none"] else names


def check_health_settings(cfg: HealthSettings) -> None:
    unknown = [n for n in report_to_names(cfg.report_to) if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--report_to {cfg.report_to}: unknown tracker {unknown[0]!r}; choose from "
                          f"{', '.join(TRACKERS)} or none")
    for name in report_to_names(cfg.report_to):
        package = TRACKER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"--report_to {name}: the {package} package is not installed; install it with "
                              f"pip install -e '.[{name}]' (or leave {name} out of --report_to)")
    for name in ("health_patience", "health_repeat"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("health_first_loss_tol", "health_first_drift", "health_displacement", "health_kl_per_token", "health_dead_margin",
                 "health_dead_grad_norm"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("health_accuracy", "health_length_gap", "health_truncated_share"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"--{name} must be in [0, 1], got {getattr(cfg, name)}")
