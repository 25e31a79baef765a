"""Choose the page's example prompts by measurement: where the DPO model reliably shows the preferred behaviour.

    python -m app.pick_examples --sft runs/sft/export --dpo runs/dpo/export --data data/demo/heldout.jsonl

For up to `--candidates` held-out prompts of every (axis, language), both models answer with every
seed 0..seeds-1 (the page's default settings: `minidpo.generation.DEFAULTS`, the same sampler as the
page, so seed s here is seed s there); the demo's judge (`minidpo.demo.judge`) says whether each answer
shows the preferred behaviour. A prompt qualifies when the DPO answer passes at least `--min_pass` of
the seeds and more often than the SFT answer; the best `--per_group` (1) of each (axis, language) are
written, by margin, to `app_examples.json` of the DPO run (what `app.examples` reads).

`--judge verify`: the data is an IFEval-format file (our own held-out constraint prompts, never IFEval's),
an answer passes when it follows every instruction of its prompt (minidpo.verify, strict), and the
groups are the instructions' kinds ("change_case", "punctuation", ...): `make smollm2-ifeval-app`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from minidpo.demo.judge import JUDGED_AXES, judge_heldout
from minidpo.errors import run_cli, set_offline_environment
from minidpo.eval.heldout import read_heldout
from minidpo.fsutil import write_text_atomic
from minidpo.generation import DEFAULTS, decode_answer, generate_ids, prompt_ids_for
from minidpo.iterate.verifier import ifeval_prompts, prompt_score
from minidpo.models import load_model


def measure(sft, dpo, records, judge, *, seeds: int = 8, settings=DEFAULTS, batch_size: int = 64) -> list[dict]:
    """Per record: how many of `seeds` answers of each model the judge passes."""
    prompts = [prompt_ids_for(dpo.tokenizer, r.prompt_messages) for r in records]
    passes = {"sft": [0] * len(records), "dpo": [0] * len(records)}
    for seed in range(seeds):
        for name, lm in (("sft", sft), ("dpo", dpo)):
            ids = generate_ids(lm.model, lm.tokenizer, prompts, settings=settings, seed=seed, stop_ids=lm.stop_ids,
                               pad_id=lm.pad_id, batch_size=batch_size)
            for k, (r, x) in enumerate(zip(records, ids)):
                passes[name][k] += bool(judge(r, decode_answer(lm.tokenizer, x, lm.stop_ids)))
    out = []
    for k, r in enumerate(records):
        system = r.prompt_messages[0]["content"] if r.prompt_messages[0]["role"] == "system" else ""
        out.append({"prompt": r.prompt, "system": system, "axis": r.axis, "lang": r.lang, "source": r.source,
                    "dpo_pass": passes["dpo"][k], "sft_pass": passes["sft"][k]})
    return out


def pick(measured: list[dict], *, min_pass: int, per_group: int, axis_order=()) -> list[dict]:
    """The qualifying prompts (DPO passes >= min_pass and more often than SFT), best margin first,
    at most per_group per (axis, language); groups in `axis_order` (then by name), English first."""
    groups: dict = defaultdict(list)
    for m in measured:
        if m["dpo_pass"] >= min_pass and m["dpo_pass"] > m["sft_pass"]:
            groups[(m["axis"], m["lang"])].append(m)
    chosen = []
    rank = {a: i for i, a in enumerate(axis_order)}
    for key in sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), str(k[0]), str(k[1]))):
        ranked = sorted(groups[key], key=lambda m: (m["dpo_pass"] - m["sft_pass"], m["dpo_pass"]), reverse=True)
        chosen += ranked[:per_group]
    return chosen


def main(argv=None) -> int:
    set_offline_environment()
    ap = argparse.ArgumentParser(prog="python -m app.pick_examples", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", required=True)
    ap.add_argument("--dpo", required=True)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder, for model files that carry none")
    ap.add_argument("--data", required=True, help="held-out data with axis / lang / meta (the demo's heldout.jsonl); "
                    "with --judge verify an IFEval-format file")
    ap.add_argument("--judge", choices=("demo", "verify"), default="demo",
                    help="demo: the demo's rule judge; verify: every instruction of an IFEval-format prompt followed")
    ap.add_argument("--data_format", default="auto")
    ap.add_argument("--output", default=None, help="default: app_examples.json of the DPO run (next to its export)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--min_pass", type=int, default=7, help="seeds the DPO answer must pass")
    ap.add_argument("--per_group", type=int, default=1, help="examples kept per axis and language")
    ap.add_argument("--candidates", type=int, default=10, help="held-out prompts tried per axis and language")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--allow_pickle_weights", action="store_true",
                    help="accept model folders whose weights are only a pickle pytorch_model.bin")
    args = ap.parse_args(argv)
    return run_cli(lambda: pick_and_write(args))  # bad models and data: one line, exit 2


def follows_every_instruction(record, answer: str) -> bool | None:
    """The verify judge's pass: the answer follows all of the prompt's instructions (None: it has none)."""
    score = prompt_score(record, answer)
    return None if score is None else score == 1.0


def pick_and_write(args) -> int:
    t0 = time.time()
    load = dict(tokenizer=args.tokenizer, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle_weights)
    sft = load_model(args.sft, "SFT", **load)
    dpo = load_model(args.dpo, "DPO", **load)
    if args.judge == "verify":
        records, judge, judge_name = ifeval_prompts(args.data), follows_every_instruction, "minidpo.verify (strict)"
    else:
        records, judge, judge_name = read_heldout(args.data, args.data_format), judge_heldout, "minidpo.demo.judge"
    per_group: dict = defaultdict(list)
    for r in records:
        if judge(r, "") is not None and len(per_group[(r.axis, r.lang)]) < args.candidates:
            per_group[(r.axis, r.lang)].append(r)
    candidates = [r for group in per_group.values() for r in group]
    measured = measure(sft, dpo, candidates, judge, seeds=args.seeds, batch_size=args.batch_size)
    chosen = pick(measured, min_pass=args.min_pass, per_group=args.per_group, axis_order=JUDGED_AXES)
    output = Path(args.output) if args.output else Path(dpo.path).parent / "app_examples.json"
    info = {"measured": {"seeds": args.seeds, "min_pass": args.min_pass, "settings": DEFAULTS.to_dict(),
                         "sft": sft.path, "dpo": dpo.path, "data": str(args.data), "judge": judge_name,
                         "candidates": len(candidates), "seconds": round(time.time() - t0, 1)},
            "examples": chosen, "all": measured}
    write_text_atomic(output, json.dumps(info, ensure_ascii=False, indent=1) + "\n")
    groups = sorted({(m["axis"], m["lang"]) for m in measured}, key=str)
    for axis, lang in groups:
        ok = [m for m in chosen if (m["axis"], m["lang"]) == (axis, lang)]
        best = max((m for m in measured if (m["axis"], m["lang"]) == (axis, lang)),
                   key=lambda m: (m["dpo_pass"] - m["sft_pass"], m["dpo_pass"]))
        print(f"{axis:<11} {lang}: {len(ok)} chosen; best DPO {best['dpo_pass']}/{args.seeds} vs SFT "
              f"{best['sft_pass']}/{args.seeds}")
    print(f"wrote {len(chosen)} examples to {output} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
