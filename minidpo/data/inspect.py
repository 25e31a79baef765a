"""`minidpo data inspect`: what a preference file holds and what the model will be trained on."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from minidpo.errors import DataError

from .boundary import plain_content, plain_prompt
from .files import read_tools
from .formats import iter_pairs
from .listwise import count_lists, row_unit
from .tokenize import load_preference_data

DIM, RESET = "\033[2m", "\033[0m"
OPEN, CLOSE = "[[", "]]"  # marks the masked (prompt) part when not using colour


def percentiles(values: Sequence[int], ps=(50, 90, 99)) -> dict:
    """Nearest-rank percentiles plus max: {"p50": .., "p90": .., "p99": .., "max": ..}."""
    v = sorted(values)
    if not v:
        return {f"p{p}": 0 for p in ps} | {"max": 0}
    out = {f"p{p}": v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))] for p in ps}
    out["max"] = v[-1]
    return out


def _table(rows: dict[str, list[int]], unit: str) -> list[str]:
    lines = [f"  {unit:<10} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"]
    for name, values in rows.items():
        q = percentiles(values)
        lines.append(f"  {name:<10} {q['p50']:>7} {q['p90']:>7} {q['p99']:>7} {q['max']:>7}")
    return lines


def _mark(prompt: str, response: str, color: bool) -> str:
    if color:
        return f"{DIM}{prompt}{RESET}{response}"
    return f"{OPEN}{prompt}{CLOSE}{response}"


def _counts(title: str, d: dict) -> list[str]:
    if not d:
        return []
    return [f"{title}: {sum(d.values())}"] + [f"  {k}: {v}" for k, v in sorted(d.items())]


def inspect_report(
    path: str | os.PathLike,
    tokenizer=None,
    *,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    data_format: str = "auto",
    index: int = 0,
    color: bool = False,
    chat_template: str = "auto",
    enable_thinking: bool | None = None,
    answer_reasoning: str = "as_given",
    tools: str | os.PathLike | None = None,
) -> tuple[str, int]:
    """(report, number of usable pairs or lists). The report: format, template choice, counts (skipped /
    truncated / dropped, by reason), what was done at the prompt/answer boundary (per file), length
    percentiles, one pair (listwise data: lists and their K answers, and one list). enable_thinking,
    answer_reasoning, tools: as `load_preference_data` takes them.

    With a tokenizer, lengths are in tokens after truncation and the pair is shown decoded from its
    token ids, the prompt part (masked out of the loss) dimmed or [[in double brackets]]. Without one,
    lengths are in characters and the pair is shown in the plain fallback template.
    """
    lines = [f"file:     {path}"]
    if tokenizer is None:
        file_tools = read_tools(tools) if tools is not None else None
        text_lines, n = _inspect_text_only(path, data_format, index, color, chat_template, file_tools)
        return "\n".join(lines + text_lines), n
    ds = load_preference_data(path, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                              data_format=data_format, on_bad_record="skip", max_bad_fraction=None,
                              cache_dir=None, log=None, chat_template=chat_template, enable_thinking=enable_thinking,
                              answer_reasoning=answer_reasoning, tools=tools)
    s = ds.stats
    unit = row_unit(ds)  # a record is one pair, or one list of K answers
    kept = count_lists([len(r.answer_ids) for r in ds]) if unit == "lists" else f"{s.kept} pairs"
    lines += [f"format:   {s.format}", f"template: {s.template}"
              + (f"; {s.raw_pairs} {unit} encoded raw" if s.raw_pairs and chat_template != "none" else ""),
              f"records:  {s.read} read, {kept} kept",
              f"limits:   max_length={max_length}, max_prompt_length={max_prompt_length}",
              f"thinking: enable_thinking={'(template default)' if enable_thinking is None else enable_thinking}, "
              f"answer_reasoning={answer_reasoning}"]
    lines += _counts("skipped (bad records)", s.skipped)
    lines += [f"truncated: {s.truncated} {unit} ({s.prompt_truncated} prompts kept their end, "
              f"{s.response_truncated} with a response cut)"]
    lines += _counts("dropped", s.dropped)
    if s.boundary:
        lines += ["prompt/answer boundary (per file):"] + [f"  {what}: {n} {unit}"
                                                          for what, n in sorted(s.boundary.items())]
    lines += _examples(s.examples)
    if unit == "lists":
        return "\n".join(lines + _listwise_view(ds, tokenizer, index, color)), len(ds)
    lines += ["token lengths (after truncation):"]
    lines += _table({"prompt": [len(p.prompt_ids) for p in ds], "chosen": [len(p.chosen_ids) for p in ds],
                     "rejected": [len(p.rejected_ids) for p in ds], "sequence": ds.lengths}, "tokens")
    if len(ds):
        i = min(max(index, 0), len(ds) - 1)
        p = ds[i]
        prompt = tokenizer.decode(p.prompt_ids)
        lines += ["", f"pair {i} ({ds.sources[i]}), as the model sees it; the prompt ({len(p.prompt_ids)} tokens) is "
                  + ("dimmed" if color else f"inside {OPEN} {CLOSE}") + ": masked out of the loss; the rest is trained."]
        for name, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            end = tokenizer.convert_ids_to_tokens(ids[-1]) if ids else "nothing"
            lines += [f"--- {name} ({len(ids)} trained tokens, the last {end!r}) ---",
                      _mark(prompt, tokenizer.decode(ids), color)]
    return "\n".join(lines), len(ds)


def _listwise_view(ds, tokenizer, index: int, color: bool) -> list[str]:
    """Listwise data: lengths per prompt, answer and row, and one list's answers with their scores."""
    lines = ["token lengths (after truncation):"]
    lines += _table({"prompt": [len(r.prompt_ids) for r in ds], "answer": [len(a) for r in ds for a in r.answer_ids],
                     "row": ds.lengths}, "tokens")
    i = min(max(index, 0), len(ds) - 1)
    r = ds[i]
    prompt = tokenizer.decode(r.prompt_ids)
    lines += ["", f"list {i} ({ds.sources[i]}): {len(r.answer_ids)} answers in one row; the prompt "
              f"({len(r.prompt_ids)} tokens, computed once) is " + ("dimmed" if color else f"inside {OPEN} {CLOSE}")
              + ": masked out of the loss; the rest is trained."]
    for k, (ids, score) in enumerate(zip(r.answer_ids, r.scores)):
        lines += [f"--- answer {k} (score {score:g}, {len(ids)} trained tokens) ---",
                  _mark(prompt, tokenizer.decode(ids), color)]
    return lines


def _examples(examples: dict) -> list[str]:
    if not examples:
        return []
    return ["first problem of each kind:"] + [f"  {msg}" for msg in examples.values()]


def _inspect_text_only(path, data_format: str, index: int, color: bool, chat_template: str,
                       tools: list | None) -> tuple[list[str], int]:
    formats, skipped, examples, pairs = [], {}, {}, []
    for _, fmt, item in iter_pairs(path, data_format, tools):
        if fmt not in formats and fmt != "unknown":
            formats.append(fmt)
        if isinstance(item, DataError):
            skipped[item.reason] = skipped.get(item.reason, 0) + 1
            examples.setdefault(item.reason, str(item))
        else:
            pairs.append(item)
    template = ("none (raw prompt + answer + EOS)" if chat_template == "none"
                else "the model's chat template (pass --model to see it; shown below in the plain fallback)")
    lists = [len(p.responses) for p in pairs if p.responses is not None]
    valid = f"{len(pairs) - len(lists)} valid pairs" if len(lists) < len(pairs) else ""
    if lists:
        valid += (" + " if valid else "") + f"{count_lists(lists)} valid"
    lines = [f"format:   {'+'.join(formats) or 'unknown'}", f"template: {template}",
             f"records:  {len(pairs) + sum(skipped.values())} read, {valid or '0 valid pairs'}",
             "(no --model: lengths are in characters; pass --model PATH for token lengths, truncation and masks)"]
    lines += _counts("skipped (bad records)", skipped) + _examples(examples)
    lines += ["character lengths:"]
    rows = {"prompt": [sum(len(m["content"]) for m in p.prompt_messages) for p in pairs],
            "chosen": [len(plain_content(p.answers()[0])) for p in pairs],
            "rejected": [len(plain_content(p.answers()[1])) for p in pairs]}
    if any(p.responses is not None for p in pairs):  # listwise: chosen / rejected are each list's best / worst
        rows["answer"] = [len(plain_content(a)) for p in pairs if p.responses is not None for a in p.responses]
    lines += _table(rows, "chars")
    if pairs:
        i = min(max(index, 0), len(pairs) - 1)
        p = pairs[i]
        prompt = plain_prompt(p.prompt_messages, p.tools)
        masked = ("dimmed" if color else f"inside {OPEN} {CLOSE}") + " (masked out of the loss)."
        if p.responses is None:
            lines += ["", f"pair {i} ({p.source}) in the plain fallback template; the prompt is {masked}"]
            answers = list(zip(("chosen", "rejected"), p.answers()))
        else:
            lines += ["", f"list {i} ({p.source}): {len(p.responses)} answers with their scores (higher is better), "
                      f"in the plain fallback template; the prompt is {masked}"]
            answers = [(f"answer {k} (score {score:g})", a) for k, (a, score) in enumerate(zip(p.responses, p.scores))]
        for name, answer in answers:
            lines += [f"--- {name} ---", _mark(prompt, plain_content(answer) + "<EOS>", color)]
    return lines, len(pairs)
