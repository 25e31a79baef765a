"""Evaluate a DPO model against the SFT model it started from, on held-out preference pairs.

    python -m minidpo.evaluate --sft runs/demo-sft/export --dpo runs/demo-dpo/export \\
        --data data/demo/heldout.jsonl --out runs/demo-dpo/eval --beta 0.1

or `evaluate(sft_dir, dpo_dir, heldout_path, out_dir, beta=0.1, ...)`. Four measurements:

1. Preference accuracy on the held-out pairs (no sampling). With the SFT model as the reference,
   the DPO model's implicit reward is r(y) = beta * (log pi_dpo(y|x) - log pi_sft(y|x)) (sums over
   response tokens, as in training); `implicit_reward_accuracy` is how often r(chosen) > r(rejected),
   the held-out twin of the trainer's `rewards/accuracies`. `logp_accuracy` is each model's own
   ranking, log pi(chosen) > log pi(rejected); it is length-biased (a long complete answer has a lower
   sum than one short line), so the per-token variant is reported too.
2. Behaviour: both models answer held-out prompts (sampled, same seed and settings); the rule-based
   judge (`minidpo.demo.judge`) says whether each answer shows the preferred behaviour. Rates with
   counts per axis, per axis and language, and overall. Records without an `axis` are not judged.
3. KL(pi_dpo || pi_sft) on held-out prompts, estimated at the sequence level: the mean over answers
   y ~ pi_dpo(.|x) (temperature 1, no top-k / top-p, at most `kl_max_new_tokens` tokens) of
   log pi_dpo(y|x) - log pi_sft(y|x), with its standard error. The sampled token ids are scored as
   they are (no decode / re-encode). Answers cut at the token limit make it the KL of the
   distribution over their first tokens, which is never larger than the full one.
4. A side-by-side table of sample answers.

Writes `eval.json` and `eval.md` into `out_dir` and logs the figures as TensorBoard scalars there
(`eval/implicit_reward_accuracy`, `eval/logp_accuracy/{sft,dpo}`, `eval/judge/<axis>/{sft,dpo}`,
`eval/kl_dpo_sft`, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from minidpo.logprobs import sequence_logprobs


# ------------------------------------------------------------------------------------------ loading
def load_records(path) -> list[dict]:
    """Preference records from a JSONL file: `prompt` (a string or a list of chat messages), `chosen`,
    `rejected`; `axis`, `lang`, `meta` when present (the demo data has them)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); expected one object per line") from None
            for key in ("prompt", "chosen", "rejected"):
                if key not in r:
                    raise ValueError(f"{path}:{n}: missing field {key!r}; evaluation expects "
                                     "{prompt, chosen, rejected} records (see python -m minidpo.demo.generate)")
            records.append(r)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def prompt_messages(record: dict) -> list[dict]:
    p = record["prompt"]
    return [{"role": "user", "content": p}] if isinstance(p, str) else list(p)


def prompt_text(record: dict) -> str:
    p = record["prompt"]
    return p if isinstance(p, str) else p[-1]["content"]


def load_model(path, device: str = "cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def check_model_dir(path, what: str) -> None:
    """A readable error for a model folder that is not there (instead of a Hub lookup failure)."""
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"{what} model folder {str(path)!r} has no config.json: pass a Hugging Face folder "
                         "(model + tokenizer), e.g. the `export` folder of a training run")


def load_tokenizers(sft_dir, dpo_dir):
    """The DPO model's tokenizer, after checking the SFT model's has the same vocabulary."""
    from transformers import AutoTokenizer

    check_model_dir(sft_dir, "SFT")
    check_model_dir(dpo_dir, "DPO")
    tok = AutoTokenizer.from_pretrained(str(dpo_dir))
    sft_tok = AutoTokenizer.from_pretrained(str(sft_dir))
    if sft_tok.get_vocab() != tok.get_vocab():
        raise ValueError(f"the tokenizers of {sft_dir} and {dpo_dir} differ: a DPO model must be compared with "
                         "the SFT model it was trained from")
    return tok


def trained_beta(dpo_dir, default: float = 0.1) -> float:
    """The beta a DPO export was trained with: `run_config.json` of its run folder (the export's
    parent, as the trainer writes them), else `default`."""
    path = Path(dpo_dir).parent / "run_config.json"
    try:
        beta = json.loads(path.read_text(encoding="utf-8"))["run"]["beta"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return float(beta) if isinstance(beta, (int, float)) and beta > 0 else default


# ------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def score_rows(model, rows: list[tuple[list[int], list[int]]], pad_id: int, *, batch_size: int = 32,
               device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(response | prompt) summed over response tokens, response lengths) for (prompt_ids,
    response_ids) rows. Rows are batched by length and right-padded."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    logps = torch.zeros(len(rows))
    ntok = torch.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        loss_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            p, r = rows[i]
            if not p:
                raise ValueError("a scored response needs at least one prompt token before it")
            input_ids[j, :len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
            attention_mask[j, :len(p) + len(r)] = 1
            loss_mask[j, len(p):len(p) + len(r)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        lp, n = sequence_logprobs(logits, input_ids.to(device), loss_mask.to(device))
        logps[idx] = lp.float().cpu()
        ntok[idx] = n.float().cpu()
    return logps, ntok


def _rate(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def preference_metrics(sft_c, sft_r, dpo_c, dpo_r, n_c, n_r, beta: float) -> dict:
    """Held-out preference figures from per-pair log-probs (1-D tensors of equal length)."""
    r_c, r_r = beta * (dpo_c - sft_c), beta * (dpo_r - sft_r)
    return {
        "n_pairs": int(len(sft_c)),
        "implicit_reward_accuracy": float((r_c > r_r).float().mean()),
        "implicit_reward_ties": float((r_c == r_r).float().mean()),
        "implicit_reward_margin": float((r_c - r_r).mean()),
        "rewards_chosen": float(r_c.mean()),
        "rewards_rejected": float(r_r.mean()),
        "logp_accuracy": {"sft": float((sft_c > sft_r).float().mean()), "dpo": float((dpo_c > dpo_r).float().mean())},
        "logp_accuracy_per_token": {
            "sft": float((sft_c / n_c.clamp(min=1) > sft_r / n_r.clamp(min=1)).float().mean()),
            "dpo": float((dpo_c / n_c.clamp(min=1) > dpo_r / n_r.clamp(min=1)).float().mean())},
        "logps_chosen": {"sft": float(sft_c.mean()), "dpo": float(dpo_c.mean())},
        "logps_rejected": {"sft": float(sft_r.mean()), "dpo": float(dpo_r.mean())},
    }


# ---------------------------------------------------------------------------------------- sampling
def stratified(records: list[dict], n: int | None) -> list[dict]:
    """Up to n records, taking turns over the (axis, lang) groups so that every group is represented."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r.get("axis"), r.get("lang"))].append(r)
    queues = [groups[k] for k in sorted(groups, key=lambda k: (str(k[0]), str(k[1])))]
    out, i = [], 0
    limit = len(records) if n is None else min(n, len(records))
    while len(out) < limit:
        for q in queues:
            if i < len(q) and len(out) < limit:
                out.append(q[i])
        i += 1
    return out


def judge_table(records: list[dict], sft_ok: list[bool | None], dpo_ok: list[bool | None]) -> dict:
    """{"all": cell, "<axis>": {**cell, "by_lang": {lang: cell}}} with cell = n, pass counts and rates."""
    def cell(ix):
        n = len(ix)
        s, d = sum(bool(sft_ok[i]) for i in ix), sum(bool(dpo_ok[i]) for i in ix)
        return {"n": n, "sft_pass": s, "dpo_pass": d, "sft_rate": s / n if n else None, "dpo_rate": d / n if n else None}

    judged = [i for i in range(len(records)) if sft_ok[i] is not None]
    table = {"all": cell(judged)}
    for axis in sorted({records[i]["axis"] for i in judged}):
        ix = [i for i in judged if records[i]["axis"] == axis]
        table[axis] = cell(ix)
        table[axis]["by_lang"] = {lang: cell([i for i in ix if records[i].get("lang") == lang])
                                  for lang in sorted({records[i].get("lang") for i in ix})}
    return table


def _judge(record: dict, answer: str) -> bool | None:
    from minidpo.demo.judge import JUDGED_AXES, judge

    if record.get("axis") not in JUDGED_AXES or record.get("lang") is None:
        return None
    return judge(record["axis"], prompt_text(record), answer, record["lang"], record.get("meta"))


# ------------------------------------------------------------------------------------------ report
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
        f"- held-out data: `{s['heldout_path']}` ({p['n_pairs']} pairs), beta = {s['beta']}",
        f"- sampling: temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']}, "
        f"repetition penalty {s['repetition_penalty']}, max {s['max_new_tokens']} new tokens, seed {s['seed']}",
        "", "## Preference accuracy (held-out pairs, no sampling)", "",
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
                         f"{mark(e['sft_ok'])}{_cell_text(e['sft'])} | {mark(e['dpo_ok'])}{_cell_text(e['dpo'])} |")
        lines.append("")
    lines.append(f"_Evaluation took {result['seconds']:.0f} s._")
    return "\n".join(lines) + "\n"


def _scalars(result: dict) -> dict[str, float]:
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


# -------------------------------------------------------------------------------------------- main
def evaluate(
    sft_dir,
    dpo_dir,
    heldout_path,
    out_dir,
    *,
    beta: float | None = None,
    n_generate: int | None = 160,
    max_new_tokens: int = 160,
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 0.95,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    n_kl: int | None = 64,
    kl_max_new_tokens: int | None = None,
    n_examples: int = 2,
    batch_size: int = 32,
    device: str = "cpu",
    tensorboard: bool = True,
    step: int = 0,
) -> dict:
    """Compare a DPO model with its SFT reference on held-out pairs; write eval.json / eval.md / scalars.

    Args:
        sft_dir, dpo_dir: Hugging Face folders (model + tokenizer) of the SFT model and the DPO model.
        heldout_path: JSONL of {prompt, chosen, rejected[, axis, lang, meta]} records.
        out_dir: where eval.json, eval.md and the TensorBoard events go (created if needed).
        beta: the beta the DPO model was trained with (scales the implicit rewards); None reads it
            from the run's `run_config.json` next to `dpo_dir` (`trained_beta`), else 0.1.
        n_generate: held-out records to sample answers for (stratified over axis x language, so the
            default 160 is 20 per axis and language on the demo data; None = every record, 0 = skip).
        max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed: sampling settings for
            the judged answers (`minidpo.generation.generate`); both models use the same ones.
        n_kl: prompts for the KL estimate (0 = skip); kl_max_new_tokens defaults to max_new_tokens.
        n_examples: side-by-side answers shown per (axis, language).
    Returns:
        The dict written to eval.json: "settings", "preference", "preference_by_axis", "judge",
        "kl", "examples", "seconds".
    """
    from minidpo.data import ChatEncoder
    from minidpo.generation import decode_answer, generate_ids, prompt_ids_for

    if beta is None:
        beta = trained_beta(dpo_dir)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(heldout_path)
    tok = load_tokenizers(sft_dir, dpo_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sft, dpo = load_model(sft_dir, device), load_model(dpo_dir, device)
    settings = dict(sft_dir=str(sft_dir), dpo_dir=str(dpo_dir), heldout_path=str(heldout_path), beta=beta,
                    n_generate=n_generate, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                    top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, n_kl=n_kl,
                    kl_max_new_tokens=kl_max_new_tokens or max_new_tokens, logprob_reduction="sum")

    # 1. preference accuracy on every held-out pair
    encoder = ChatEncoder(tok)  # the trainer's tokenisation (encode_prompt_response), built once
    chosen_rows, rejected_rows = [], []
    for r in records:
        msgs = prompt_messages(r)
        p_ids, c_ids = encoder.encode_prompt_response(msgs, r["chosen"])
        p2_ids, r_ids = encoder.encode_prompt_response(msgs, r["rejected"])
        chosen_rows.append((p_ids, c_ids))
        rejected_rows.append((p2_ids, r_ids))
    rows = chosen_rows + rejected_rows
    n = len(records)
    sft_lp, ntok = score_rows(sft, rows, pad_id, batch_size=batch_size, device=device)
    dpo_lp, _ = score_rows(dpo, rows, pad_id, batch_size=batch_size, device=device)
    parts = (sft_lp[:n], sft_lp[n:], dpo_lp[:n], dpo_lp[n:], ntok[:n], ntok[n:])
    preference = preference_metrics(*parts, beta=beta)
    by_axis = {}
    for axis in sorted({r.get("axis") for r in records if r.get("axis")}):
        ix = torch.tensor([i for i, r in enumerate(records) if r.get("axis") == axis])
        by_axis[axis] = preference_metrics(*(t[ix] for t in parts), beta=beta)

    # 2. judged answers from both models, same prompts and sampling settings
    judge, examples = None, []
    chosen_for_gen = stratified(records, n_generate) if n_generate != 0 else []
    if chosen_for_gen:
        prompts = [prompt_ids_for(tok, prompt_messages(r), encoder) for r in chosen_for_gen]
        gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                   repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size)
        sft_ans = [decode_answer(tok, x) for x in generate_ids(sft, tok, prompts, **gen)]
        dpo_ans = [decode_answer(tok, x) for x in generate_ids(dpo, tok, prompts, **gen)]
        sft_ok = [_judge(r, a) for r, a in zip(chosen_for_gen, sft_ans)]
        dpo_ok = [_judge(r, a) for r, a in zip(chosen_for_gen, dpo_ans)]
        if any(x is not None for x in sft_ok):
            judge = judge_table(chosen_for_gen, sft_ok, dpo_ok)
        shown: dict = defaultdict(int)
        for r, sa, so, da, do in zip(chosen_for_gen, sft_ans, sft_ok, dpo_ans, dpo_ok):
            key = (r.get("axis"), r.get("lang"))
            if shown[key] < n_examples:
                shown[key] += 1
                examples.append({"id": r.get("id"), "axis": r.get("axis") or "-", "lang": r.get("lang") or "-",
                                 "prompt": prompt_text(r), "sft": sa, "sft_ok": so, "dpo": da, "dpo_ok": do})
        examples.sort(key=lambda e: (e["axis"], e["lang"]))

    # 3. KL(pi_dpo || pi_sft): answers sampled from the DPO model at temperature 1, scored as sampled
    kl = None
    kl_records = stratified(records, n_kl) if n_kl != 0 else []
    if kl_records:
        kl_len = kl_max_new_tokens or max_new_tokens
        prompts = [prompt_ids_for(tok, prompt_messages(r), encoder) for r in kl_records]
        samples = generate_ids(dpo, tok, prompts, max_new_tokens=kl_len, temperature=1.0, top_p=1.0, top_k=0,
                               repetition_penalty=1.0, seed=seed + 1, batch_size=batch_size)
        kl_rows = [(p, y) for p, y in zip(prompts, samples)]
        lp_dpo, lens = score_rows(dpo, kl_rows, pad_id, batch_size=batch_size, device=device)
        lp_sft, _ = score_rows(sft, kl_rows, pad_id, batch_size=batch_size, device=device)
        diff = lp_dpo - lp_sft
        m = len(diff)
        kl = {"n_samples": m, "max_new_tokens": kl_len, "level": "sequence",
              "kl_sequence": float(diff.mean()),
              "kl_sequence_stderr": float(diff.std(unbiased=True) / math.sqrt(m)) if m > 1 else 0.0,
              "kl_per_token": float(diff.sum() / lens.sum().clamp(min=1)),
              "mean_answer_tokens": float(lens.mean()),
              "truncated_fraction": sum(tok.eos_token_id not in y for y in samples) / m}

    result = {"settings": settings, "preference": preference, "preference_by_axis": by_axis, "judge": judge,
              "kl": kl, "examples": examples, "seconds": time.time() - t0}
    (out / "eval.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(render_markdown(result), encoding="utf-8")
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out)) as w:
            for tag, value in _scalars(result).items():
                w.add_scalar(tag, value, step)
    return result


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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m minidpo.evaluate",
                                 description="Compare a DPO model with its SFT reference on held-out preference data.")
    ap.add_argument("--sft", required=True, help="SFT model folder (Hugging Face format, with tokenizer)")
    ap.add_argument("--dpo", required=True, help="DPO model folder (Hugging Face format, with tokenizer)")
    ap.add_argument("--data", required=True, help="held-out JSONL, e.g. data/demo/heldout.jsonl")
    ap.add_argument("--out", required=True, help="folder for eval.json, eval.md and TensorBoard scalars")
    ap.add_argument("--beta", type=float, default=None,
                    help="the beta the DPO model was trained with (default: from the run's run_config.json "
                         "next to --dpo, else 0.1)")
    ap.add_argument("--n-generate", type=int, default=160,
                    help="held-out records to answer and judge, stratified over axis x language (-1: all; 0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--n-kl", type=int, default=64, help="prompts for the KL estimate (0: skip)")
    ap.add_argument("--n-examples", type=int, default=2, help="side-by-side answers per axis and language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    n_generate = None if args.n_generate < 0 else args.n_generate
    result = evaluate(args.sft, args.dpo, args.data, args.out, beta=args.beta, n_generate=n_generate,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, temperature=args.temperature,
                      top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                      n_kl=args.n_kl, n_examples=args.n_examples, batch_size=args.batch_size, device=args.device)
    for line in summary_lines(result):
        print(line)
    print(f"wrote {Path(args.out) / 'eval.json'} and {Path(args.out) / 'eval.md'}")
    return result


if __name__ == "__main__":
    main()
