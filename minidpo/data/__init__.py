"""Preference data: files -> PreferencePair -> TokenizedPair -> padded batches.

Knows nothing of models' weights or DeepSpeed. The contract the trainer relies on:

- `TokenizedPair(prompt_ids, chosen_ids, rejected_ids)`: chosen and rejected share exactly the same
  prompt tokens; response ids end with the template's end-of-turn / EOS token.
- `collate_pairs(pairs, pad_token_id)` returns right-padded tensors of 2B rows, chosen rows first:
  `input_ids`, `attention_mask`, `loss_mask` (1 on response tokens, see `minidpo.logprobs`).
"""
