"""A run folder's health warnings as others show them: `make eval`'s eval.md and the app's run info."""

from __future__ import annotations

import json
from pathlib import Path


def run_health(path) -> list[dict] | None:
    """The health warnings summary.json recorded for a run folder or its export/ (or a checkpoint in
    it); None when no summary.json with health checks is found (not a minidpo run, or health off)."""
    here = Path(path)
    for folder in (here, *here.parents[:2]):
        summary = folder / "summary.json"
        if summary.is_file():
            try:
                health = json.loads(summary.read_text(encoding="utf-8")).get("health")
            except ValueError:
                return None
            return health if isinstance(health, list) else None
    return None


def health_markdown(path) -> str:
    """The run's health warnings as a markdown section ('' when the run recorded none or is not a run)."""
    warnings = run_health(path)
    if warnings is None:
        return ""
    if not warnings:
        return "## Training health\n\nNo health warning fired during training (docs/health.md).\n"
    lines = ["## Training health", "", f"{len(warnings)} health warning(s) during training (docs/health.md):", ""]
    for w in warnings:
        when = "at load" if w["check"] == "data" else f"step {w['step']}"
        if w.get("intervals", 1) > 1:
            when += f", {w['intervals']} log intervals until step {w['last_step']}"
        lines.append(f"- **{w['check']}** ({when}): {w['message']}")
    return "\n".join(lines) + "\n"
