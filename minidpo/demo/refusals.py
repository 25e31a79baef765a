"""How often answers refuse, by the demo's refusal rule (minidpo.demo.judge.is_refusal):

    python -m minidpo.demo.refusals runs/x/eval/answers.jsonl       # eval's answers: harmful vs harmless
    python -m minidpo.demo.refusals runs/x/ifeval/answers_dpo.jsonl  # any {"response"} file: all harmless

A refusal recipe should refuse the harmful prompts (axis "refusal") and no more of the harmless ones than
the model it started from: over-refusal is what the offline recipe's template parroting cost.
"""

from __future__ import annotations

import argparse
import sys

from minidpo.demo.judge import is_refusal
from minidpo.errors import DataError, run_cli
from minidpo.verify.records import json_lines


def read_jsonl(path: str) -> list[dict]:
    try:
        return [obj for _, obj in json_lines(path)]
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None


def refusal_counts(rows: list[dict], path: str = "answers") -> dict:
    """{model: {"harmful": (refused, n), "harmless": (refused, n)}} for eval's answers.jsonl rows ("axis",
    "sft", "dpo"), or {"response": {"harmless": ...}} for rows with a "response" (every prompt harmless)."""
    if rows and "response" in rows[0]:
        models, harmful = ["response"], lambda r: False
    else:
        models, harmful = ["sft", "dpo"], lambda r: r.get("axis") == "refusal"
    counts = {m: {"harmful": [0, 0], "harmless": [0, 0]} for m in models}
    for n, row in enumerate(rows, 1):
        for m in models:
            answer = row.get(m)
            if not isinstance(answer, str):
                raise DataError(f"{path}:{n}: field {m!r} missing or not text")
            cell = counts[m]["harmful" if harmful(row) else "harmless"]
            cell[0] += is_refusal(answer)
            cell[1] += 1
    return {m: {k: tuple(v) for k, v in c.items()} for m, c in counts.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minidpo.demo.refusals", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("answers", nargs="+", help="eval's answers.jsonl, or files of {\"response\"} lines")
    for path in ap.parse_args(argv).answers:
        for model, cells in refusal_counts(read_jsonl(path), path).items():
            shown = "  ".join(f"{kind} prompts refused {r}/{n} ({100 * r / n:.1f}%)"
                              for kind, (r, n) in cells.items() if n)
            print(f"{path} [{model}]: {shown}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
