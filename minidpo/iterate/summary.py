"""The iteration's summary by round: summary.json, summary.md and TensorBoard scalars (x axis = round).

Two tables: the demo judge's (judged rates per axis, reward accuracy, KL) and, for judge=verify, IFEval's
(prompt-level strict and instruction-level loose of the SFT model and of each round's policy, KL)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from minidpo.eval.ifeval import FIGURES as IFEVAL_FIGURES
from minidpo.iterate.votes import describe_votes

IFEVAL_COLUMNS = ("prompt_strict", "instruction_loose")  # the two figures issue 26's targets use


def eval_figures(result: dict | None, who: str = "dpo") -> dict:
    """Judged rates per axis, reward accuracy and KL from the SFT model, from an eval.json."""
    if not result:
        return {}
    if result.get("benchmark") == "ifeval":
        return ifeval_figures(result)
    judged = {axis: d[f"{who}_rate"] for axis, d in (result.get("judge") or {}).items()}
    out = {"judged": judged}
    if who == "dpo":
        out["implicit_reward_accuracy"] = result["preference"]["implicit_reward_accuracy"]
        out["kl_from_sft"] = (result.get("kl") or {}).get("kl_sequence")
        out["kl_from_sft_stderr"] = (result.get("kl") or {}).get("kl_sequence_stderr")
    return out


def ifeval_figures(result: dict) -> dict:
    """IFEval's four figures of both models and KL from the SFT model, from minidpo.eval.ifeval's eval.json."""
    kl = result.get("kl") or {}
    return {"ifeval": {who: {f: result[who][f] for f in IFEVAL_FIGURES} for who in ("sft", "dpo")},
            "ifeval_prompts": result["settings"]["prompts"], "kl_from_sft": kl.get("kl_sequence"),
            "kl_from_sft_stderr": kl.get("kl_sequence_stderr")}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt="{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def trained_on(c: dict) -> tuple[int, str]:
    """A round's training records and what they are: pairs, lists (listwise), or pairs and unpaired votes."""
    if "lists" in c:
        return c["lists"], "lists"
    if c.get("unpaired"):
        return c["pairs"] + c["unpaired"], "pairs and unpaired examples"
    return c["pairs"], "pairs"


def round_line(c: dict) -> str:
    """The log's line on a round's data, from its pairs.json counts."""
    n, unit = trained_on(c)
    if "votes" in c:
        return f"{c['pairs']} pairs" + (f" + {c['unpaired']} unpaired examples" if c.get("unpaired") else "") + \
            ": " + describe_votes(c)
    line = f"{n} {unit}"
    if "skipped" in c and "prompts" in c:
        line += f" ({c['skipped']} prompts skipped: {c.get('all_equal', 0)} all equal, {c.get('unscored', 0)} unscored)"
    if "from_edits" in c:
        line += (f"; {c['from_edits']} from edits, {c['from_samples']} from sampling alone, {c['below_margin']} "
                 "prompts below the margin")
    return line


def _pairs_cell(c: dict) -> str:
    if not c:
        return "–"
    records = str(c.get("lists", c.get("pairs")))
    if c.get("unpaired"):
        records += f" + {c['unpaired']} unpaired"
    return f"{records} ({c.get('skipped', 0)})"


def _records_head(rows: list[dict]) -> str:
    return "lists (skipped)" if any("lists" in (r.get("pairs") or {}) for r in rows) else "pairs (skipped)"


def votes_notes(rows: list[dict]) -> list[str]:
    """Below the table, for votes rounds: where the votes went, ties and both-bad votes included."""
    lines = [f"- round {r['round']}: {describe_votes(r['pairs'])}" for r in rows if "votes" in (r.get("pairs") or {})]
    return ["", "Votes (--judge votes):", *lines] if lines else []


def render_ifeval_markdown(rows: list[dict]) -> list[str]:
    names = {"prompt_strict": "prompt strict", "instruction_loose": "inst. loose"}
    head = ["round", "policy", _records_head(rows), "from edits", *[f"SFT {names[f]}" for f in IFEVAL_COLUMNS],
            *[names[f] for f in IFEVAL_COLUMNS], "KL(π‖π_sft)", "sample s", "train s", "eval s"]
    n = next((r["eval"]["ifeval_prompts"] for r in rows if (r.get("eval") or {}).get("ifeval")), "–")
    lines = ["# Iterative DPO by round (verifier judge)", "",
             f"IFEval's figures on {n} held-out prompts (--heldout, greedy): prompt-level strict and "
             "instruction-level loose, of the SFT model and of the round's policy; pairs from edits: the chosen "
             "answer is a sample edited until the verifier passed it; KL: sequence-level, nats per answer, "
             "from the SFT model.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e, c, t = r.get("eval") or {}, r.get("pairs") or {}, r.get("seconds") or {}
        fig = e.get("ifeval") or {}
        lines.append("| " + " | ".join([
            str(r["round"]), r.get("label", ""), _pairs_cell(c), str(c.get("from_edits", "–")),
            *[_pct(fig.get("sft", {}).get(f)) for f in IFEVAL_COLUMNS],
            *[_pct(fig.get("dpo", {}).get(f)) for f in IFEVAL_COLUMNS], _num(e.get("kl_from_sft")),
            _num(t.get("sample"), "{:.0f}"), _num(t.get("train"), "{:.0f}"), _num(t.get("eval"), "{:.0f}")]) + " |")
    return lines


def render_demo_markdown(rows: list[dict]) -> list[str]:
    axes = sorted({a for r in rows for a in (r.get("eval") or {}).get("judged", {}) if a != "all"})
    head = ["round", "policy", _records_head(rows), *[f"{a}" for a in axes], "all axes", "reward acc.", "KL(π‖π_sft)",
            "sample s", "train s", "eval s"]
    lines = ["# Iterative DPO by round", "",
             "Judged rates: share of sampled held-out answers with the preferred behaviour (the demo judge, "
             "`make eval`'s settings); reward accuracy: β·log(π/π_sft) ranks chosen above rejected on the "
             "held-out pairs; KL: sequence-level, nats per answer, from the SFT model.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e, c, t = r.get("eval") or {}, r.get("pairs") or {}, r.get("seconds") or {}
        lines.append("| " + " | ".join([
            str(r["round"]), r.get("label", ""), _pairs_cell(c), *[_pct(e.get("judged", {}).get(a)) for a in axes],
            _pct(e.get("judged", {}).get("all")), _pct(e.get("implicit_reward_accuracy")),
            _num(e.get("kl_from_sft")), _num(t.get("sample"), "{:.0f}"), _num(t.get("train"), "{:.0f}"),
            _num(t.get("eval"), "{:.0f}")]) + " |")
    return lines


def render_markdown(rows: list[dict], stopped: str | None) -> str:
    verify = any((r.get("eval") or {}).get("ifeval") or "from_edits" in (r.get("pairs") or {}) for r in rows)
    lines = render_ifeval_markdown(rows) if verify else render_demo_markdown(rows)
    lines += votes_notes(rows)
    if stopped:
        lines += ["", f"**Stopped:** {stopped}"]
    return "\n".join(lines) + "\n"


def scalars(row: dict) -> dict[str, float]:
    e, out = row.get("eval") or {}, {}
    for axis, rate in e.get("judged", {}).items():
        if rate is not None:
            out[f"iterate/judge/{axis}"] = rate
    for who, figures in e.get("ifeval", {}).items():
        for f, value in figures.items():
            out[f"iterate/ifeval/{f}/{'policy' if who == 'dpo' else who}"] = value
    for key in ("implicit_reward_accuracy", "kl_from_sft"):
        if e.get(key) is not None:
            out[f"iterate/{key}"] = e[key]
    if row.get("pairs"):
        c = row["pairs"]
        out["iterate/lists" if "lists" in c else "iterate/pairs"] = c.get("lists", c.get("pairs"))
        if c.get("unpaired"):
            out["iterate/unpaired"] = c["unpaired"]
        if "from_edits" in row["pairs"]:
            out["iterate/pairs_from_edits"] = row["pairs"]["from_edits"]
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
