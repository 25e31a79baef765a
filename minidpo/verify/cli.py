"""`python -m minidpo.verify INPUT.jsonl ANSWERS.jsonl [--details OUT.jsonl]`: score any model's answers
on IFEval-format prompts; prints the four figures and the accuracy per instruction kind."""

from __future__ import annotations

import argparse

from minidpo.errors import run_cli
from minidpo.fsutil import write_jsonl_atomic
from minidpo.verify.records import match_answers, read_answers, read_ifeval
from minidpo.verify.scoring import score


def report_lines(summary: dict) -> list[str]:
    """The figures, the per-kind table and the notes (unanswered prompts, unknown ids) as printed lines."""
    n = summary["prompts"]

    def pct(x: float) -> str:
        return f"{100 * x:5.1f}%"

    lines = [f"{n} prompts, {summary['instructions']} instructions",
             f"{'':<20}{'strict':>8}{'loose':>8}",
             f"{'prompt-level':<20}{pct(summary['prompt_strict']):>8}{pct(summary['prompt_loose']):>8}",
             f"{'instruction-level':<20}{pct(summary['instruction_strict']):>8}{pct(summary['instruction_loose']):>8}",
             "",
             f"{'instruction kind':<48}{'n':>5}{'strict':>8}{'loose':>8}"]
    for kind, row in summary["per_kind"].items():
        lines.append(f"{kind:<48}{row['n']:>5}{pct(row['strict']):>8}{pct(row['loose']):>8}")
    if summary["unanswered"]:
        lines.append(f"{summary['unanswered']} of {n} prompts have no answer (counted as failed)")
    if summary["unknown_ids"]:
        listed = ", ".join(f"{kind} x{count}" for kind, count in summary["unknown_ids"].items())
        lines.append(f"{sum(summary['unknown_ids'].values())} instructions have an unknown id (counted as not "
                     f"followed): {listed}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minidpo.verify",
                                 description="Score answers on IFEval-format prompts (Zhou et al. 2023): prompt- "
                                 "and instruction-level accuracy, strict and loose.")
    ap.add_argument("input", help="prompts, IFEval's format: one {key, prompt, instruction_id_list, kwargs} a line")
    ap.add_argument("answers", help="answers: one {key, response} (or {prompt, response}) a line")
    ap.add_argument("--details", default=None,
                    help="write each prompt's per-instruction strict and loose verdicts here (JSONL)")
    return ap


def run(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    records = read_ifeval(args.input)
    responses, unmatched = match_answers(records, read_answers(args.answers))
    results, summary = score(records, responses)
    for line in report_lines(summary):
        print(line)
    if unmatched:
        print(f"{len(unmatched)} answers name no prompt of {args.input} (ignored; first on line {unmatched[0].line})")
    if args.details:
        write_jsonl_atomic(args.details, ({**result.to_json(), "prompt": record.prompt, "kwargs": record.kwargs,
                                           "response": response}
                                          for record, response, result in zip(records, responses, results)))
        print(f"wrote {args.details}")
    return summary


def main(argv=None) -> dict:
    """`run`, with a malformed record printed as one `error: file:line:field: ...` line (exit status 2)."""
    summary: dict = {}
    code = run_cli(lambda: summary.update(run(argv)))
    if code:
        raise SystemExit(code)
    return summary
