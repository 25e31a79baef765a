"""Data red flags, found once the preference data are loaded: what makes DPO learn the wrong thing
before a single step runs. Each is one line with the count, the likely cause and what to change."""

from __future__ import annotations

from minidpo.data.chat import ChatEncoder

# the reasons minidpo.data counts bad records and dropped pairs under (with on_bad_record skip)
IDENTICAL = ("chosen identical to rejected", "chosen identical to rejected after truncation")
EMPTY = "empty field"


def end_ids(tokenizer, chat_template: str) -> set[int]:
    """The tokens an answer may end with: EOS and the chat template's end-of-turn token."""
    ids = {tokenizer.eos_token_id, ChatEncoder(tokenizer, chat_template).end_id}
    return {i for i in ids if i is not None}


def data_red_flags(dataset, tokenizer, cfg) -> list[str]:
    """The red flags of a loaded PreferenceDataset (minidpo.data), given the run's data settings."""
    stats, flags = dataset.stats, []
    n = max(len(dataset), 1)
    identical = sum(stats.skipped.get(r, 0) + stats.dropped.get(r, 0) for r in IDENTICAL)
    identical += sum(p.chosen_ids == p.rejected_ids for p in dataset)
    if identical:
        flags.append(f"{identical} pairs have identical chosen and rejected answers (skipped or dropped): they "
                     "teach nothing - check the data's chosen/rejected columns")
    ends = end_ids(tokenizer, cfg.chat_template)
    empty = stats.skipped.get(EMPTY, 0) + sum(
        all(t in ends for t in ids) for p in dataset for ids in (p.chosen_ids, p.rejected_ids)
        if ids)  # an unpaired example has no rejected ids
    if empty:
        flags.append(f"{empty} answers are empty (skipped, or only an end token): the model learns to answer "
                     "nothing or to never answer - fix or drop those records")
    # an answer that filled the room the prompt left was cut (counted below); any other must end with an end token
    no_end = sum(ids[-1] not in ends for p in dataset for ids in (p.chosen_ids, p.rejected_ids)
                 if ids and len(p.prompt_ids) + len(ids) < cfg.max_length)
    if no_end:
        flags.append(f"{no_end} answers do not end with EOS / end-of-turn: the model is not taught to stop - "
                     "check the tokenizer's eos_token and chat template (--chat_template)")
    share = cfg.health_truncated_share
    if stats.response_truncated / n > share:
        flags.append(f"{stats.response_truncated} of {len(dataset)} pairs ({stats.response_truncated / n:.0%}) have "
                     f"an answer cut at max_length={cfg.max_length}: a cut answer loses its EOS and the pair may be "
                     f"judged on its cut-off part - raise --max_length [--health_truncated_share {share:g}]")
    if stats.prompt_truncated / n > share:
        flags.append(f"{stats.prompt_truncated} of {len(dataset)} prompts ({stats.prompt_truncated / n:.0%}) fill "
                     f"max_prompt_length={cfg.max_prompt_length} and lose their beginning (the question may be "
                     f"gone) - raise --max_prompt_length (and --max_length) [--health_truncated_share {share:g}]")
    return flags
