"""IFEval (Zhou et al. 2023) for an SFT and a DPO model: greedy answers, IFEval's four figures side by side
and per instruction kind, and KL(DPO || SFT).

    python -m minidpo.eval --benchmark ifeval --data input_data.jsonl --sft A --dpo B --output_dir OUT

The benchmark file is IFEval's own `input_data.jsonl` (541 prompts; see docs/ifeval.md for where to get
it: nothing here downloads it). Each prompt is one user turn through the model's chat template; answers
are greedy, up to `max_new_tokens` (512, as the issue's and the model cards' figures), batched with the
KV cache (the one sampler). Written to OUT: eval.json, eval.md, answers_sft.jsonl / answers_dpo.jsonl
(IFEval's response format, scorable again by `python -m minidpo.verify`), details_*.jsonl, TensorBoard.
`sft_answers` reuses an earlier run's answers_sft.jsonl (greedy answers do not change): only the DPO model
answers, which halves the time of comparing one more DPO model with the same SFT model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from minidpo.data import ChatEncoder
from minidpo.errors import ConfigError, ModelError
from minidpo.eval.metrics import sampled_kl
from minidpo.fsutil import write_jsonl_atomic, write_text_atomic
from minidpo.generation import SamplingSettings, decode_answer, generate_ids, prompt_ids_for
from minidpo.metrics import progress
from minidpo.models import load_model, same_vocab
from minidpo.verify import aggregate, read_ifeval, score_prompt
from minidpo.verify.records import match_answers, read_answers

FIGURES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
FIGURE_NAMES = {"prompt_strict": "prompt-level strict", "prompt_loose": "prompt-level loose",
                "instruction_strict": "instruction-level strict", "instruction_loose": "instruction-level loose"}


def greedy_answers(lm, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers in the prompts' order; batches of similar length, with a progress bar and ETA."""
    greedy = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, top_k=0,
                              repetition_penalty=1.0, seed=0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    for batch in progress(batches, desc=f"IFEval answers ({lm.role})", unit="batch"):
        ids = generate_ids(lm.model, lm.tokenizer, [prompts[i] for i in batch], settings=greedy, stop_ids=lm.stop_ids,
                           pad_id=lm.pad_id, batch_size=len(batch))
        for i, x in zip(batch, ids):
            answers[i] = decode_answer(lm.tokenizer, x, lm.stop_ids)
    return answers


def earlier_answers(path, records, *, sft_dir: str, max_new_tokens: int, dtype: str) -> list[str]:
    """The SFT answers of an earlier run, in the records' order. When its eval.json sits beside the file,
    the settings that change greedy answers must be the same as this run's."""
    path = Path(path)
    answers, _ = match_answers(records, read_answers(path))
    missing = [r.key for r, a in zip(records, answers) if a is None]
    if missing:
        raise ConfigError(f"--sft_answers {path}: no answer for {len(missing)} of the {len(records)} prompts "
                          f"(first: key {missing[0]}); it must come from a run on the same data")
    report = path.parent / "eval.json"
    if report.is_file():
        earlier = json.loads(report.read_text(encoding="utf-8")).get("settings", {})
        now = {"max_new_tokens": max_new_tokens, "dtype": dtype, "sft_dir": sft_dir}
        for name, value in now.items():
            if name in earlier and str(earlier[name]) != str(value):
                raise ConfigError(f"--sft_answers {path}: its run had {name} {earlier[name]}, this one {value}; "
                                  "answers made otherwise are not this SFT model's greedy answers")
    return answers


def evaluate_ifeval(sft, dpo, data, out_dir, *, tokenizer: str | None = None, device: str = "auto",
                    dtype: str = "auto", max_new_tokens: int = 512, batch_size: int = 16, n_kl: int = 64,
                    kl_max_new_tokens: int = 128, limit: int | None = None, allow_pickle: bool = False,
                    tensorboard: bool = True, step: int = 0, sft_answers: str | None = None, log=print) -> dict:
    """Answer IFEval's prompts with both models (any model sources), score them, write the reports.
    limit: the first `limit` prompts only (a quick look; the figures are then not IFEval's).
    sft_answers: an earlier run's answers_sft.jsonl, used instead of answering with the SFT model again."""
    t0 = time.time()
    records = read_ifeval(data)[:limit]
    load = dict(tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
    models = {"sft": load_model(sft, "SFT", **load)}
    same = str(sft) == str(dpo)  # one model's figures (a baseline): answered once, no KL
    models["dpo"] = models["sft"] if same else load_model(dpo, "DPO", **load)
    if not same_vocab(models["sft"].tokenizer, models["dpo"].tokenizer):
        raise ModelError(f"the tokenizers of {sft} and {dpo} differ: compare a DPO model with the model it came from")
    tok = models["dpo"].tokenizer
    encoder = ChatEncoder(tok)
    prompts = [prompt_ids_for(tok, [{"role": "user", "content": r.prompt}], encoder) for r in records]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "ifeval", "settings": {
        "data": str(data), "prompts": len(records), "limit": limit, "sft_dir": models["sft"].path,
        "dpo_dir": models["dpo"].path, "max_new_tokens": max_new_tokens, "decoding": "greedy",
        "dtype": str(models["dpo"].dtype).replace("torch.", ""), "device": str(models["dpo"].device)}}
    answered = {}
    if sft_answers:
        answered[id(models["sft"])] = earlier_answers(sft_answers, records, sft_dir=models["sft"].path,
                                                      max_new_tokens=max_new_tokens, dtype=result["settings"]["dtype"])
        result["settings"]["sft_answers"] = str(sft_answers)
    for name, lm in models.items():
        if id(lm) not in answered:
            answered[id(lm)] = greedy_answers(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        answers = answered[id(lm)]
        scored = [score_prompt(r, a) for r, a in zip(records, answers)]
        result[name] = aggregate(scored)
        write_jsonl_atomic(out / f"answers_{name}.jsonl",
                           ({"key": r.key, "prompt": r.prompt, "response": a} for r, a in zip(records, answers)))
        write_jsonl_atomic(out / f"details_{name}.jsonl", (s.to_json() for s in scored))
        log(f"{lm.role}: " + ", ".join(f"{FIGURE_NAMES[f]} {100 * result[name][f]:.1f}%" for f in FIGURES))
    result["kl"] = None
    if n_kl and not same:
        result["kl"] = sampled_kl(models["dpo"], models["sft"], prompts[:n_kl], max_new_tokens=kl_max_new_tokens,
                                  seed=1, stop_ids=models["dpo"].stop_ids, pad_id=models["dpo"].pad_id,
                                  batch_size=batch_size)
    result["seconds"] = round(time.time() - t0, 1)
    write_text_atomic(out / "eval.json", json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "eval.md", render_markdown(result))
    if tensorboard:
        with SummaryWriter(log_dir=str(out)) as w:
            for name in ("sft", "dpo"):
                for f in FIGURES:
                    w.add_scalar(f"eval/ifeval/{f}/{name}", result[name][f], step)
            if result["kl"]:
                w.add_scalar("eval/kl_dpo_sft", result["kl"]["kl_sequence"], step)
    return result


def render_markdown(result: dict) -> str:
    s, d, st = result["sft"], result["dpo"], result["settings"]
    lines = [f"# IFEval: SFT vs DPO ({st['prompts']} prompts, greedy, up to {st['max_new_tokens']} new tokens)", "",
             f"SFT `{st['sft_dir']}`, DPO `{st['dpo_dir']}`, {st['dtype']} on {st['device']}.", "",
             "| figure | SFT | DPO | change |", "|---|---|---|---|"]
    for f in FIGURES:
        lines.append(f"| {FIGURE_NAMES[f]} | {100 * s[f]:.1f}% | {100 * d[f]:.1f}% | {100 * (d[f] - s[f]):+.1f} |")
    if result.get("kl"):
        k = result["kl"]
        lines += ["", f"KL(DPO || SFT): {k['kl_sequence']:.2f} ± {k['kl_sequence_stderr']:.2f} nats per answer "
                      f"({k['n_samples']} answers sampled from the DPO model, up to {k['max_new_tokens']} tokens)."]
    lines += ["", "| instruction kind | n | SFT strict | DPO strict | SFT loose | DPO loose |", "|---|---|---|---|---|---|"]
    for kind in sorted(d["per_kind"]):
        a, b = s["per_kind"][kind], d["per_kind"][kind]
        lines.append(f"| {kind} | {b['n']} | {100 * a['strict']:.1f}% | {100 * b['strict']:.1f}% | "
                     f"{100 * a['loose']:.1f}% | {100 * b['loose']:.1f}% |")
    if d.get("unknown_ids"):
        lines += ["", "Unknown instruction ids (counted as not followed): "
                  + ", ".join(f"{k} ({v})" for k, v in d["unknown_ids"].items())]
    return "\n".join(lines) + "\n"


def summary_lines(result: dict) -> list[str]:
    lines = [f"IFEval, {result['settings']['prompts']} prompts:"]
    for f in FIGURES:
        lines.append(f"  {FIGURE_NAMES[f]:<25} SFT {100 * result['sft'][f]:5.1f}%   DPO {100 * result['dpo'][f]:5.1f}%")
    if result.get("kl"):
        lines.append(f"  KL(dpo || sft) {result['kl']['kl_sequence']:.2f} nats per answer")
    return lines
