"""`evaluate`: a DPO model against the SFT model it started from, on held-out preference pairs.

Four measurements (see `minidpo.eval`): preference accuracy on every held-out pair (no sampling);
behaviour, when a judge is given (both models answer held-out prompts with the same sampler, seed and
settings); KL(pi_dpo || pi_sft) at the sequence level; a side-by-side table of sample answers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from minidpo.data import ChatEncoder
from minidpo.errors import ModelError
from minidpo.fsutil import write_jsonl_atomic
from minidpo.eval.heldout import HeldoutPair, read_heldout, stratified
from minidpo.eval.metrics import judge_table, preference_metrics, sampled_kl
from minidpo.eval.report import write_reports
from minidpo.generation import DEFAULTS, SamplingSettings, decode_answer, generate_ids, prompt_ids_for
from minidpo.models import load_model, resolve_beta, same_vocab
from minidpo.scoring import score_rows

# A judge says whether an answer to a held-out pair's prompt shows the preferred behaviour:
# True / False, or None for a record it does not judge (e.g. no `axis`). The demo's is
# minidpo.demo.judge.judge_heldout; without one, evaluation reports the preference metrics alone
# (plus KL and the side-by-side answers).
Judge = Callable[[HeldoutPair, str], "bool | None"]


@dataclass(frozen=True)
class EvalSettings:
    """How much to measure. Sampling settings for the judged answers are `SamplingSettings`."""

    n_generate: int | None = 160  # records to answer and judge, stratified over axis x language (None: all; 0: skip)
    n_kl: int | None = 64  # prompts for the KL estimate (0: skip)
    kl_max_new_tokens: int | None = None  # default: the sampling max_new_tokens
    n_examples: int = 2  # side-by-side answers shown per (axis, language)
    batch_size: int = 32


_SAMPLING = {f.name for f in fields(SamplingSettings)}
_EVAL = {f.name for f in fields(EvalSettings)}


def _split_overrides(overrides: dict, sampling: SamplingSettings | None, settings: EvalSettings | None):
    unknown = set(overrides) - _SAMPLING - _EVAL
    if unknown:
        raise TypeError(f"evaluate() got unknown setting(s): {', '.join(sorted(unknown))}")
    sampling = SamplingSettings(**{**asdict(sampling or DEFAULTS), **{k: v for k, v in overrides.items() if k in _SAMPLING}})
    settings = EvalSettings(**{**asdict(settings or EvalSettings()), **{k: v for k, v in overrides.items() if k in _EVAL}})
    return sampling.check(), settings


def evaluate(sft, dpo, heldout_path, out_dir, *, beta: float | None = None, judge: Judge | None = None,
             sampling: SamplingSettings | None = None, settings: EvalSettings | None = None,
             data_format: str = "auto", tokenizer: str | None = None, device: str = "cpu", dtype: str = "fp32",
             allow_pickle: bool = False, enable_thinking: bool | None = None,
             tensorboard: bool = True, step: int = 0, **overrides) -> dict:
    """Compare a DPO model with its SFT reference on held-out pairs; write eval.json / eval.md / scalars.

    Args:
        sft, dpo: model sources (`minidpo.models.load_model`: a Hugging Face folder, a .gguf file, ...).
        heldout_path: held-out preference data in any format the trainer reads (`data_format`).
        out_dir: where eval.json, eval.md and the TensorBoard events go (created if needed).
        beta: the beta the DPO model was trained with (scales the implicit rewards); None reads it
            from the DPO run's `run_config.json` (`minidpo.models.resolve_beta`), else 0.1.
        judge: see `Judge`; None skips the behaviour table.
        sampling, settings: SamplingSettings / EvalSettings; keyword overrides (`n_generate=16`,
            `max_new_tokens=8`, `seed=3`, ...) replace single fields of either.
        tokenizer, device, dtype: as for `load_model` (`--tokenizer`, `--device`, `--dtype`).
        enable_thinking: the data setting of the same name, passed to the chat template when scoring the
            pairs and building the prompts answered (None: the template's default).
    Returns:
        The dict written to eval.json: "settings", "preference", "preference_by_axis", "judge",
        "kl", "examples", "seconds".
    """
    sampling, settings = _split_overrides(overrides, sampling, settings)
    t0 = time.time()
    beta, beta_source = resolve_beta(beta, dpo)
    records = read_heldout(heldout_path, data_format)
    sft_lm = load_model(sft, "SFT", tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
    dpo_lm = load_model(dpo, "DPO", tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if not same_vocab(sft_lm.tokenizer, dpo_lm.tokenizer):
        raise ModelError(f"the tokenizers of {sft} and {dpo} differ: a DPO model must be compared with "
                         "the SFT model it was trained from")
    tok, stops, pad = dpo_lm.tokenizer, dpo_lm.stop_ids, dpo_lm.pad_id
    kl_len = settings.kl_max_new_tokens or sampling.max_new_tokens
    result_settings = dict(sft_dir=sft_lm.path, dpo_dir=dpo_lm.path, heldout_path=str(heldout_path), beta=beta,
                           beta_source=beta_source, enable_thinking=enable_thinking, **asdict(settings),
                           **asdict(sampling), logprob_reduction="sum")
    result_settings["kl_max_new_tokens"] = kl_len
    encoder = ChatEncoder(tok, enable_thinking=enable_thinking)  # the trainer's tokenisation, built once
    bs = settings.batch_size

    # 1. preference accuracy on every held-out pair: chosen rows, then rejected rows
    # (the answers as messages, with the record's tools: a tool-call answer's text alone is empty)
    rows = [encoder.encode_prompt_response(r.prompt_messages, r.answers()[0], tools=r.tools) for r in records]
    rows += [encoder.encode_prompt_response(r.prompt_messages, r.answers()[1], tools=r.tools) for r in records]
    n = len(records)
    sft_lp, ntok = score_rows(sft_lm.model, rows, pad, batch_size=bs)
    dpo_lp, _ = score_rows(dpo_lm.model, rows, pad, batch_size=bs)
    parts = (sft_lp[:n], sft_lp[n:], dpo_lp[:n], dpo_lp[n:], ntok[:n], ntok[n:])
    preference = preference_metrics(*parts, beta=beta)
    by_axis = {}
    for axis in sorted({r.axis for r in records if r.axis}):
        ix = torch.tensor([i for i, r in enumerate(records) if r.axis == axis])
        by_axis[axis] = preference_metrics(*(t[ix] for t in parts), beta=beta)

    # 2. answers from both models, same prompts, sampler and settings; judged when a judge is given
    judged, examples = None, []
    for_gen = stratified(records, settings.n_generate) if settings.n_generate != 0 else []
    if for_gen:
        prompts = [prompt_ids_for(tok, r.prompt_messages, encoder, r.tools) for r in for_gen]
        answers = {}
        for lm in (sft_lm, dpo_lm):
            ids = generate_ids(lm.model, tok, prompts, settings=sampling, stop_ids=stops, pad_id=pad, batch_size=bs)
            answers[lm.role] = [decode_answer(tok, x, stops) for x in ids]
        verdicts = {role: [judge(r, a) if judge else None for r, a in zip(for_gen, ans)]
                    for role, ans in answers.items()}
        if any(v is not None for v in verdicts["SFT"]):
            judged = judge_table(for_gen, verdicts["SFT"], verdicts["DPO"])
        rows = [{"id": r.id, "axis": r.axis, "lang": r.lang, "prompt": r.prompt, "sft": answers["SFT"][k],
                 "sft_ok": verdicts["SFT"][k], "dpo": answers["DPO"][k], "dpo_ok": verdicts["DPO"][k]}
                for k, r in enumerate(for_gen)]
        # every judged answer, for re-scoring with another judge (e.g. the demo's over-refusal count)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(Path(out_dir) / "answers.jsonl", rows)
        shown: dict = defaultdict(int)
        for row in rows:
            if shown[(row["axis"], row["lang"])] < settings.n_examples:
                shown[(row["axis"], row["lang"])] += 1
                examples.append({**row, "axis": row["axis"] or "-", "lang": row["lang"] or "-"})
        examples.sort(key=lambda e: (e["axis"], e["lang"]))

    # 3. KL(pi_dpo || pi_sft): answers sampled from the DPO model at temperature 1, scored as sampled
    kl = None
    kl_records = stratified(records, settings.n_kl) if settings.n_kl != 0 else []
    if kl_records:
        prompts = [prompt_ids_for(tok, r.prompt_messages, encoder, r.tools) for r in kl_records]
        kl = sampled_kl(dpo_lm, sft_lm, prompts, max_new_tokens=kl_len, seed=sampling.seed + 1, stop_ids=stops,
                        pad_id=pad, batch_size=bs)

    result = {"settings": result_settings, "preference": preference, "preference_by_axis": by_axis,
              "judge": judged, "kl": kl, "examples": examples, "seconds": time.time() - t0}
    write_reports(result, out_dir, tensorboard=tensorboard, step=step)
    return result
