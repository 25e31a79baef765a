"""Reports of an evaluation: eval.md (for people), eval.json (everything), TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path

from minidpo.data.display import answer_markdown
from minidpo.fsutil import write_text_atomic
from minidpo.health import health_markdown


def _fmt(x, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


def _cell_text(s: str, limit: int = 400) -> str:
    s = s if len(s) <= limit else s[:limit] + " …"
    return s.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def render_markdown(result: dict) -> str:
    s = result["settings"]
    p = result["preference"]
    lines = [
        "# DPO vs SFT on held-out data", "",
        f"- SFT model: `{s['sft_dir']}`", f"- DPO model: `{s['dpo_dir']}`",
        f"- held-out data: `{s['heldout_path']}` ({p['n_pairs']} pairs), beta = {s['beta']} "
        f"(from {s.get('beta_source', '--beta')})",
        f"- sampling: temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']}, "
        f"repetition penalty {s['repetition_penalty']}, max {s['max_new_tokens']} new tokens, seed {s['seed']}",
        "", *health_lines(s["dpo_dir"]), "## Preference accuracy (held-out pairs, no sampling)", "",
        "| | all |" + "".join(f" {a} |" for a in result["preference_by_axis"]),
        "|---|---|" + "---|" * len(result["preference_by_axis"]),
    ]
    by_axis = result["preference_by_axis"]
    rows = [("implicit reward accuracy: beta·log(π_dpo/π_sft)(chosen) > (rejected)", lambda d: d["implicit_reward_accuracy"]),
            ("SFT ranks chosen above rejected (log π sum)", lambda d: d["logp_accuracy"]["sft"]),
            ("DPO ranks chosen above rejected (log π sum)", lambda d: d["logp_accuracy"]["dpo"]),
            ("SFT ranks chosen above rejected (per token)", lambda d: d["logp_accuracy_per_token"]["sft"]),
            ("DPO ranks chosen above rejected (per token)", lambda d: d["logp_accuracy_per_token"]["dpo"])]
    for name, get in rows:
        lines.append(f"| {name} | {_fmt(get(p))} |" + "".join(f" {_fmt(get(d))} |" for d in by_axis.values()))
    lines += ["", f"Mean implicit reward margin: {p['implicit_reward_margin']:.3f} "
              f"(chosen {p['rewards_chosen']:.3f}, rejected {p['rewards_rejected']:.3f}).", ""]

    j = result.get("judge")
    if j:
        lines += ["## Behaviour judged by rule (sampled answers to held-out prompts)", "",
                  "| axis | lang | n | SFT | DPO |", "|---|---|---|---|---|"]
        for axis, d in j.items():
            if axis == "all":
                continue
            for lang, c in d["by_lang"].items():
                lines.append(f"| {axis} | {lang} | {c['n']} | {c['sft_pass']} ({_fmt(c['sft_rate'])}) | "
                             f"{c['dpo_pass']} ({_fmt(c['dpo_rate'])}) |")
            lines.append(f"| **{axis}** | all | {d['n']} | **{d['sft_pass']} ({_fmt(d['sft_rate'])})** | "
                         f"**{d['dpo_pass']} ({_fmt(d['dpo_rate'])})** |")
        a = j["all"]
        lines += [f"| **all** | all | {a['n']} | **{a['sft_pass']} ({_fmt(a['sft_rate'])})** | "
                  f"**{a['dpo_pass']} ({_fmt(a['dpo_rate'])})** |", ""]

    k = result.get("kl")
    if k:
        lines += ["## KL(π_dpo ‖ π_sft) on held-out prompts", "",
                  f"Sequence-level estimate over {k['n_samples']} answers sampled from the DPO model "
                  f"(temperature 1, at most {k['max_new_tokens']} tokens, {_fmt(k['truncated_fraction'])} cut at "
                  f"that limit): **{k['kl_sequence']:.3f} nats per answer** (± {k['kl_sequence_stderr']:.3f} "
                  f"standard error), {k['kl_per_token']:.4f} nats per token.", ""]

    ex = result.get("examples")
    if ex:
        lines += ["## Side by side", "", "✓ = the judge's preferred behaviour.", "",
                  "| axis | lang | prompt | SFT | DPO |", "|---|---|---|---|---|"]
        for e in ex:
            mark = lambda ok: "" if ok is None else ("✓ " if ok else "✗ ")  # noqa: E731
            lines.append(f"| {e['axis']} | {e['lang']} | {_cell_text(e['prompt'])} | "
                         f"{mark(e['sft_ok'])}{answer_markdown(e['sft'], table_cell=True, limit=400)} | "
                         f"{mark(e['dpo_ok'])}{answer_markdown(e['dpo'], table_cell=True, limit=400)} |")
        lines.append("")
    lines.append(f"_Evaluation took {result['seconds']:.0f} s._")
    return "\n".join(lines) + "\n"


def health_lines(dpo_dir) -> list[str]:
    """The DPO run's health warnings (its summary.json), when the DPO model is a minidpo run or its export."""
    section = health_markdown(dpo_dir)
    return [*section.splitlines(), ""] if section else []


def scalars(result: dict) -> dict[str, float]:
    p = result["preference"]
    out = {"eval/implicit_reward_accuracy": p["implicit_reward_accuracy"],
           "eval/implicit_reward_margin": p["implicit_reward_margin"],
           "eval/logp_accuracy/sft": p["logp_accuracy"]["sft"],
           "eval/logp_accuracy/dpo": p["logp_accuracy"]["dpo"]}
    for axis, d in result["preference_by_axis"].items():
        out[f"eval/implicit_reward_accuracy/{axis}"] = d["implicit_reward_accuracy"]
    for axis, d in (result.get("judge") or {}).items():
        for who in ("sft", "dpo"):
            if d[f"{who}_rate"] is not None:
                out[f"eval/judge/{axis}/{who}"] = d[f"{who}_rate"]
    if result.get("kl"):
        out["eval/kl_dpo_sft"] = result["kl"]["kl_sequence"]
        out["eval/kl_dpo_sft_per_token"] = result["kl"]["kl_per_token"]
    return out


def write_reports(result: dict, out_dir, *, tensorboard: bool = True, step: int = 0) -> None:
    """eval.json, eval.md and (tensorboard=True) the scalars as TensorBoard events, all in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "eval.md", render_markdown(result))
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out)) as w:
            for tag, value in scalars(result).items():
                w.add_scalar(tag, value, step)


def summary_lines(result: dict) -> list[str]:
    p = result["preference"]
    lines = [f"implicit reward accuracy {_fmt(p['implicit_reward_accuracy'])} on {p['n_pairs']} held-out pairs "
             f"(log π ranking: SFT {_fmt(p['logp_accuracy']['sft'])}, DPO {_fmt(p['logp_accuracy']['dpo'])})"]
    for axis, d in (result.get("judge") or {}).items():
        lines.append(f"judge {axis:<11} SFT {d['sft_pass']:>4}/{d['n']:<4} ({_fmt(d['sft_rate'])})   "
                     f"DPO {d['dpo_pass']:>4}/{d['n']:<4} ({_fmt(d['dpo_rate'])})")
    if result.get("kl"):
        k = result["kl"]
        lines.append(f"KL(dpo || sft) {k['kl_sequence']:.3f} ± {k['kl_sequence_stderr']:.3f} nats per answer "
                     f"({k['n_samples']} samples)")
    return lines
