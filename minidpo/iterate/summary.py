"""The iteration's summary by round: summary.json, summary.md and TensorBoard scalars (x axis = round)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def eval_figures(result: dict | None, who: str = "dpo") -> dict:
    """Judged rates per axis, reward accuracy and KL from the SFT model, from an eval.json."""
    if not result:
        return {}
    judged = {axis: d[f"{who}_rate"] for axis, d in (result.get("judge") or {}).items()}
    out = {"judged": judged}
    if who == "dpo":
        out["implicit_reward_accuracy"] = result["preference"]["implicit_reward_accuracy"]
        out["kl_from_sft"] = (result.get("kl") or {}).get("kl_sequence")
        out["kl_from_sft_stderr"] = (result.get("kl") or {}).get("kl_sequence_stderr")
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt="{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def render_markdown(rows: list[dict], stopped: str | None) -> str:
    axes = sorted({a for r in rows for a in (r.get("eval") or {}).get("judged", {}) if a != "all"})
    head = ["round", "policy", "pairs (skipped)", *[f"{a}" for a in axes], "all axes", "reward acc.", "KL(π‖π_sft)",
            "sample s", "train s", "eval s"]
    lines = ["# Iterative DPO by round", "",
             "Judged rates: share of sampled held-out answers with the preferred behaviour (the demo judge, "
             "`make eval`'s settings); reward accuracy: β·log(π/π_sft) ranks chosen above rejected on the "
             "held-out pairs; KL: sequence-level, nats per answer, from the SFT model.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e, c, t = r.get("eval") or {}, r.get("pairs") or {}, r.get("seconds") or {}
        pairs = f"{c['pairs']} ({c.get('skipped', 0)})" if c else "–"
        lines.append("| " + " | ".join([
            str(r["round"]), r.get("label", ""), pairs, *[_pct(e.get("judged", {}).get(a)) for a in axes],
            _pct(e.get("judged", {}).get("all")), _pct(e.get("implicit_reward_accuracy")),
            _num(e.get("kl_from_sft")), _num(t.get("sample"), "{:.0f}"), _num(t.get("train"), "{:.0f}"),
            _num(t.get("eval"), "{:.0f}")]) + " |")
    if stopped:
        lines += ["", f"**Stopped:** {stopped}"]
    return "\n".join(lines) + "\n"


def scalars(row: dict) -> dict[str, float]:
    e, out = row.get("eval") or {}, {}
    for axis, rate in e.get("judged", {}).items():
        if rate is not None:
            out[f"iterate/judge/{axis}"] = rate
    for key in ("implicit_reward_accuracy", "kl_from_sft"):
        if e.get(key) is not None:
            out[f"iterate/{key}"] = e[key]
    if row.get("pairs"):
        out["iterate/pairs"] = row["pairs"]["pairs"]
    for key, s in (row.get("seconds") or {}).items():
        out[f"iterate/seconds/{key}"] = s
    return out


def write_summary(out_dir, rows: list[dict], stopped: str | None, tensorboard: bool = True) -> dict:
    out = Path(out_dir)
    summary = {"rounds": rows, "stopped": stopped}
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(rows, stopped), encoding="utf-8")
    if tensorboard:  # rewritten whole, so a resumed iteration has each round once
        from torch.utils.tensorboard import SummaryWriter

        tb = out / "tensorboard"
        shutil.rmtree(tb, ignore_errors=True)
        with SummaryWriter(log_dir=str(tb)) as w:
            for row in rows:
                if row.get("label") == "SFT":
                    continue
                for tag, value in scalars(row).items():
                    w.add_scalar(tag, value, row["round"])
    return summary
