"""The live health checks of a run (rank 0): fed the reduced sums at each log interval by
minidpo.metrics.MetricTracker, so they add no host synchronisation to the training loop.

A warning is printed when its check first fires and again every `health_repeat` intervals while it
keeps firing; every interval writes a `health/<check>` scalar (1 firing, 0 not) and the printed
warnings go to metrics.jsonl ("health/warnings": {check: warning}) and TensorBoard text. `warnings()` is what summary.json keeps:
the data red flags found at load, then each check's first firing with how long it lasted.
"""

from __future__ import annotations

import json
import os

from minidpo.health.checks import (
    TREND_CHECKS,
    Interval,
    dead_learning,
    expected_first_loss,
    interval_from_sums,
    reference_mismatch,
)

CHECKS = ("reference_mismatch", *TREND_CHECKS, "dead_learning")
WARNINGS_KEY = "health/warnings"  # a metrics.jsonl row's printed warnings


class HealthMonitor:
    def __init__(self, cfg, data_warnings: list[str] | None = None):
        self.cfg = cfg
        self.expected_first_loss = expected_first_loss(cfg)
        # LD-DPO scores the policy's long answers differently from the reference's: not equal at step 0
        self.check_first_step = getattr(cfg, "ld_alpha", None) is None
        self.history: list[Interval] = []
        self.firing = dict.fromkeys(CHECKS, 0)  # intervals in a row each check has fired
        self.fired: dict[str, dict] = {}  # check -> {"check", "step", "message", "last_step", "intervals"}
        self.data = [{"check": "data", "step": 0, "message": m} for m in data_warnings or []]

    def observe(self, step: int, sums: dict, grad_norm: float | None = None,
                first_step: dict | None = None) -> tuple[dict, dict]:
        """One log interval: (the `health/*` scalars, {check: warning} to print now).
        first_step: the sums of optimizer step 1 alone, given at the interval that holds it."""
        found = {}
        if first_step and first_step["pairs"] and self.check_first_step:
            message = reference_mismatch(first_step, self.expected_first_loss, self.cfg)
            if message:
                found["reference_mismatch"] = message
        interval = interval_from_sums(step, sums, grad_norm)
        if interval is not None:
            self.history.append(interval)
            for name, check in TREND_CHECKS.items():
                message = check(self.history, self.cfg)
                if message:
                    found[name] = message
            message = dead_learning(self.history, self.cfg, self.cfg.learning_rate)
            if message:
                found["dead_learning"] = message
        printed = {}
        for name in CHECKS:
            if name not in found:
                self.firing[name] = 0
                continue
            self.firing[name] += 1
            record = self.fired.setdefault(name, {"check": name, "step": step, "message": found[name]})
            record.update(last_step=step, intervals=record.get("intervals", 0) + 1)
            if (self.firing[name] - 1) % self.cfg.health_repeat == 0:
                printed[name] = found[name]
        scalars = {f"health/{name}": float(name in found) for name in CHECKS}
        return scalars, printed

    def warnings(self) -> list[dict]:
        return self.data + [self.fired[name] for name in CHECKS if name in self.fired]

    def resume_from(self, metrics_path: str) -> None:
        """After a resume: take the firings the kept metrics.jsonl rows record, so summary.json still
        lists the warnings of the steps before the resume (trends start afresh)."""
        if not os.path.isfile(metrics_path):
            return
        with open(metrics_path) as f:
            for line in f:
                row = json.loads(line)
                printed = row.get(WARNINGS_KEY) or {}
                for name in CHECKS:
                    if row.get(f"health/{name}"):
                        record = self.fired.setdefault(name, {"check": name, "step": row["step"],
                                                              "message": printed.get(name, "")})
                        record.update(last_step=row["step"], intervals=record.get("intervals", 0) + 1)
