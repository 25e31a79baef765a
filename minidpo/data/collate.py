"""TokenizedPairs -> a padded batch: chosen rows first, then rejected rows, dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .tokenize import TokenizedPair


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Pad B pairs into one batch of 2B sequences.

    Returns a dict of right-padded LongTensors, each (2B, T):
        input_ids:      rows [0:B] = prompt + chosen, rows [B:2B] = prompt + rejected; pad_token_id after.
        attention_mask: 1 on real tokens, 0 on padding.
        loss_mask:      1 on response tokens only (the convention of `minidpo.logprobs`).
    T is the longest sequence in this batch rounded up to a multiple of `pad_to_multiple_of`
    (never padded to max_length).
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to its EOS token) before collating")
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    longest = max(len(a) + len(b) for a, b in seqs)
    m = max(1, pad_to_multiple_of or 1)
    T = -(-longest // m) * m
    input_ids = torch.full((len(seqs), T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for n, (prompt, response) in enumerate(seqs):
        P, R = len(prompt), len(response)
        input_ids[n, :P + R] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[n, :P + R] = 1
        loss_mask[n, P:P + R] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
