"""Preference data: files -> PreferencePair -> TokenizedPair -> padded batches.

Knows nothing of models' weights or DeepSpeed. The contract the trainer relies on:

- `TokenizedPair(prompt_ids, chosen_ids, rejected_ids)`: chosen and rejected share exactly the same
  prompt tokens; response ids end with the template's end-of-turn / EOS token.
- `collate_pairs(pairs, pad_token_id)` returns right-padded tensors of 2B rows, chosen rows first:
  `input_ids`, `attention_mask`, `loss_mask` (1 on response tokens, see `minidpo.logprobs`).
- `collate_packed(pairs, pad_token_id)` returns B rows [prompt, chosen, rejected] for the shared-prompt
  forward: `input_ids`, `position_ids`, `segment_ids`, `source` (see its docstring).

    files.py     file / folder -> raw records (JSON, JSONL, Parquet, Arrow), each named file:line
    messages.py  a record's messages, tool calls, tool results, reasoning and tools -> template messages
    formats.py   record -> PreferencePair (several formats, errors name file:line and field)
    listwise.py  a listwise record (K ranked answers) -> prompt, answers, scores; TokenizedList
    boundary.py  where the prompt ends and the answer starts (the template's generation prompt)
    chat.py      chat template (or plain / raw) -> response-only ids (ChatEncoder, TokenizedPair)
    display.py   an answer as Markdown: thinking folded, tool calls as JSON
    tokenize.py  truncation, stats, the dataset and its on-disk cache
    collate.py   dynamic padding, [chosen; rejected] rows, packed [prompt, chosen, rejected] rows, or
                 listwise [prompt, answer_1, ..., answer_K] rows
    plan.py      batch_plan, budget_steps, Batching: deterministic, length-grouped, equal work per rank
"""

from .chat import ChatEncoder, TokenizedPair, encode_prompt_response
from .collate import collate_packed, collate_pairs
from .formats import FORMATS, PreferencePair, detect_format, iter_pairs
from .plan import Batching, batch_plan
from .tokenize import (
    DEFAULT_CACHE_DIR,
    DataStats,
    PreferenceDataset,
    load_preference_data,
    truncate_pair,
)

__all__ = [
    "FORMATS",
    "DEFAULT_CACHE_DIR",
    "ChatEncoder",
    "DataStats",
    "PreferenceDataset",
    "PreferencePair",
    "TokenizedPair",
    "Batching",
    "batch_plan",
    "collate_packed",
    "collate_pairs",
    "detect_format",
    "encode_prompt_response",
    "iter_pairs",
    "load_preference_data",
    "truncate_pair",
]
