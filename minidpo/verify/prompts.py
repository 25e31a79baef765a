"""Training prompts of our own in IFEval's input format: a base task plus 1-3 compatible constraints.

    python -m minidpo.verify.prompts --out DIR --n_train N --n_heldout M --seed S

writes DIR/train.jsonl and DIR/heldout.jsonl, one {"key", "prompt", "instruction_id_list", "kwargs"} a line
(what `python -m minidpo.verify` and the verifier judge read). Seeded and deterministic. The held-out split
uses base tasks and phrasings (the last one of each kind) that the training split never uses, to watch
generalisation while developing. IFEval's own prompts are a benchmark: nothing here copies or
paraphrases them.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

from minidpo.errors import ConfigError, run_cli
from minidpo.fsutil import write_jsonl_atomic
from minidpo.verify import tasks as T
from minidpo.verify.constraints import KINDS, compatible
from minidpo.verify.records import IFEvalRecord

HELDOUT_EVERY = 6  # every sixth base task (and question) is held out
N_CONSTRAINTS_WEIGHTS = {1: 0.4, 2: 0.4, 3: 0.2}
HELDOUT_KEY_OFFSET = 1_000_000


def split_tasks(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tasks, yes/no questions) of a split: "train" or "heldout"."""
    def pick(items):
        held = split == "heldout"
        return tuple(t for i, t in enumerate(items) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held)
    return pick(T.TASKS), pick(T.QUESTIONS)


def split_phrasings(kind: str, split: str) -> tuple[str, ...]:
    phrasings = KINDS[kind].phrasings
    return phrasings[-1:] if split == "heldout" else phrasings[:-1]


def _words_in(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()}


def _consistent(task: str, kinds: list[str], kwargs: list[dict]) -> bool:
    """Whether the drawn arguments can all be followed together (keywords that must appear are not
    forbidden or capped, a capped letter is in no word the answer must contain)."""
    args = {kind: kw for kind, kw in zip(kinds, kwargs)}
    required = set(args.get("keywords:existence", {}).get("keywords", []))
    text_needed = " ".join([*required,
                            args.get("length_constraints:nth_paragraph_first_word", {}).get("first_word", ""),
                            args.get("startend:end_checker", {}).get("end_phrase", ""),
                            args.get("detectable_content:postscript", {}).get("postscript_marker", ""),
                            args.get("detectable_format:multiple_sections", {}).get("section_spliter", "")])
    if "detectable_format:constrained_response" in args:
        text_needed += " my answer is yes no maybe"
    frequency = args.get("keywords:frequency")
    if frequency:
        if frequency["relation"] == "less than":
            if frequency["keyword"] in _words_in(text_needed):
                return False
        else:
            required.add(frequency["keyword"])
    forbidden = set(args.get("keywords:forbidden_words", {}).get("forbidden_words", []))
    if forbidden & (required | _words_in(text_needed) | _words_in(task)):
        return False
    letter = args.get("keywords:letter_frequency")
    return not (letter and letter["let_relation"] == "less than" and letter["letter"] in text_needed.lower())


def draw_prompt(rng: random.Random, split: str, key: int) -> IFEvalRecord:
    """One prompt of the split: a task and 1-3 compatible constraints, phrased and with arguments drawn."""
    tasks, questions = split_tasks(split)
    n = rng.choices(list(N_CONSTRAINTS_WEIGHTS), weights=list(N_CONSTRAINTS_WEIGHTS.values()))[0]
    while True:
        kinds: list[str] = []
        for _ in range(n):
            options = [kind for kind in KINDS if compatible(kinds, kind)]
            kinds.append(rng.choice(options))
        task = rng.choice(questions if "detectable_format:constrained_response" in kinds else tasks)
        drawn = [KINDS[kind].draw(rng) for kind in kinds]
        kwargs = [dict(kw) for kw, _ in drawn]
        if _consistent(task, kinds, kwargs):
            break
    sentences = []
    for kind, kw, (_, fields) in zip(kinds, kwargs, drawn):
        if kind == "combination:repeat_prompt":
            kw["prompt_to_repeat"] = task
            fields = {"request": task}
        sentences.append(rng.choice(split_phrasings(kind, split)).format(**fields))
    order = list(range(len(kinds)))
    rng.shuffle(order)
    prompt = " ".join([task, *(sentences[i] for i in order)])
    return IFEvalRecord(key=key, prompt=prompt, instruction_id_list=[kinds[i] for i in order],
                        kwargs=[kwargs[i] for i in order])


def generate(n: int, split: str, seed: int) -> list[IFEvalRecord]:
    """`n` distinct prompts of a split ("train" or "heldout"), the same for the same seed."""
    if split not in ("train", "heldout"):
        raise ConfigError(f"split {split!r}: expected train or heldout")
    rng = random.Random(f"minidpo.verify.prompts:{split}:{seed}")
    offset = HELDOUT_KEY_OFFSET if split == "heldout" else 0
    records: list[IFEvalRecord] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(f"--n_{split} {n}: could not draw that many distinct prompts; ask for fewer")
        record = draw_prompt(rng, split, offset + len(records) + 1)
        if record.prompt not in seen:
            seen.add(record.prompt)
            records.append(record)
    return records



def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minidpo.verify.prompts",
                                 description="Write training and held-out prompts with verifiable constraints "
                                 "(IFEval's input format).")
    ap.add_argument("--out", required=True, help="folder for train.jsonl and heldout.jsonl")
    ap.add_argument("--n_train", type=int, default=2000)
    ap.add_argument("--n_heldout", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def run(argv=None) -> dict[str, list[IFEvalRecord]]:
    args = build_parser().parse_args(argv)
    for name in ("n_train", "n_heldout"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} {getattr(args, name)}: expected a number >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": generate(args.n_train, "train", args.seed),
              "heldout": generate(args.n_heldout, "heldout", args.seed)}
    for split, records in splits.items():
        write_jsonl_atomic(out / f"{split}.jsonl", (r.to_json() for r in records))
        kinds = Counter(kind for record in records for kind in record.instruction_id_list)
        print(f"wrote {out / f'{split}.jsonl'}: {len(records)} prompts, {sum(kinds.values())} instructions "
              f"of {len(kinds)} kinds")
    return splits


def main(argv=None) -> None:
    code = run_cli(lambda: run(argv))
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
