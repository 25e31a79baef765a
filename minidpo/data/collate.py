"""TokenizedPairs -> a padded batch: chosen rows first, then rejected rows, dynamic padding; or packed
[prompt, chosen, rejected] rows; or listwise [prompt, answer_1, ..., answer_K] rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .chat import TokenizedPair
from .listwise import TokenizedList


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


def kto_pairs(examples: Sequence[TokenizedPair], max_length: int) -> list[TokenizedPair]:
    """Unpaired examples (their completion as chosen_ids) -> rows for collate_pairs / collate_packed:
    example i's prompt with its own completion as "chosen" and, as "rejected", the previous example's
    completion (i - 1 mod B; TRL's KTO offset: completion i is scored after prompt i + 1), cut to the room
    max_length leaves: the mismatched pairs KTO's KL reference point is estimated from."""
    return [TokenizedPair(e.prompt_ids, e.chosen_ids, examples[i - 1].chosen_ids[:max_length - len(e.prompt_ids)])
            for i, e in enumerate(examples)]


# Segment ids of a packed row (see collate_packed).
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3


def collate_packed(pairs: Sequence[TokenizedPair], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Pack B pairs into B rows of [prompt, chosen, rejected], so the shared prompt is computed once.

    Returns a dict of LongTensors, each (B, T):
        input_ids:    prompt + chosen + rejected, pad_token_id after.
        position_ids: 0..P-1 on the prompt; both answers continue from P (rejected restarts at P).
        segment_ids:  PROMPT / CHOSEN / REJECTED / PADDING per token; the attention mask is built from it
                      (`minidpo.logprobs.packed_attention_mask`): rejected tokens never see chosen ones.
        source:       for each answer token, the position whose logits predict it: the previous
                      position, except the first rejected token, predicted from the prompt's last token.
    T is the longest row rounded up to a multiple of `pad_to_multiple_of`.
    """
    if not pairs:
        raise ValueError("collate_packed needs at least one pair")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to its EOS token) before collating")
    longest = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    m = max(1, pad_to_multiple_of or 1)
    T = -(-longest // m) * m
    input_ids = torch.full((len(pairs), T), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(pairs), T), dtype=torch.long)
    segment_ids = torch.full((len(pairs), T), PADDING, dtype=torch.long)
    source = torch.zeros((len(pairs), T), dtype=torch.long)
    for n, p in enumerate(pairs):
        P, C, R = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        input_ids[n, :P + C + R] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids, dtype=torch.long)
        position_ids[n, :P + C] = torch.arange(P + C)
        position_ids[n, P + C:P + C + R] = torch.arange(P, P + R)
        segment_ids[n, :P] = PROMPT
        segment_ids[n, P:P + C] = CHOSEN
        segment_ids[n, P + C:P + C + R] = REJECTED
        source[n, P:P + C + R] = torch.arange(P - 1, P + C + R - 1)
        source[n, P + C] = P - 1
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids, "source": source}


def padded_length(pair: TokenizedPair | TokenizedList, packed: bool) -> int:
    """The row length `pair` needs: prompt + both answers when packed, else prompt + the longer answer;
    a listwise row: prompt + all K answers (collate_listwise's row). Batches are grouped by it, so that
    little is padded, and a token budget counts it (minidpo.data.plan.padded_cost)."""
    if isinstance(pair, TokenizedList):  # one row [prompt, answer_1, ..., answer_K], packed or not
        return pair.max_length
    if packed:
        return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
    return pair.max_length


def row_parts(row: TokenizedPair | TokenizedList) -> list[list[int]]:
    """A row's id lists: a pair's prompt, chosen and rejected; a listwise row's prompt and its K answers."""
    if isinstance(row, TokenizedList):
        return [row.prompt_ids, *row.answer_ids]
    return [row.prompt_ids, row.chosen_ids, row.rejected_ids]


def is_packed(batch: dict) -> bool:
    """A batch of collate_packed ([prompt, chosen, rejected] rows), not of collate_pairs: the one place
    that tells the two kinds apart."""
    return "segment_ids" in batch


def real_tokens(batch: dict) -> int:
    """Non-padding positions of a batch from collate_pairs, collate_packed or collate_listwise."""
    if "answer_index" in batch:
        return int((batch["answer_index"] >= 0).sum())
    if is_packed(batch):
        return int((batch["segment_ids"] != PADDING).sum())
    return int(batch["attention_mask"].sum())


def collate_listwise(rows: Sequence[TokenizedList], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Pack B listwise rows into B rows of [prompt, answer_1, ..., answer_K], the prompt computed once.

    Returns (B, T) LongTensors input_ids, position_ids (0..P-1 on the prompt; every answer restarts at P),
    answer_index (0 on the prompt, k + 1 on answer k, -1 on padding; each answer attends to the prompt and
    to itself only: `minidpo.listwise_logps`) and source (the position whose logits predict each answer
    token: the previous one, the prompt's last token for an answer's first), plus scores (B, Kmax) float
    and valid (B, Kmax) bool for rows with fewer answers. T: the longest row, rounded up."""
    if not rows:
        raise ValueError("collate_listwise needs at least one row")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to its EOS token) before collating")
    m = max(1, pad_to_multiple_of or 1)
    T = -(-max(len(r.prompt_ids) + sum(map(len, r.answer_ids)) for r in rows) // m) * m
    K = max(len(r.answer_ids) for r in rows)
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), T), dtype=torch.long)
    answer_index = torch.full((len(rows), T), -1, dtype=torch.long)
    source = torch.zeros((len(rows), T), dtype=torch.long)
    scores = torch.zeros((len(rows), K), dtype=torch.float32)
    valid = torch.zeros((len(rows), K), dtype=torch.bool)
    for n, r in enumerate(rows):
        P = start = len(r.prompt_ids)
        input_ids[n, :P] = torch.tensor(r.prompt_ids, dtype=torch.long)
        position_ids[n, :P] = torch.arange(P)
        answer_index[n, :P] = 0
        for k, ids in enumerate(r.answer_ids):
            end = start + len(ids)
            input_ids[n, start:end] = torch.tensor(ids, dtype=torch.long)
            position_ids[n, start:end] = torch.arange(P, P + len(ids))
            answer_index[n, start:end] = k + 1
            source[n, start:end] = torch.arange(start - 1, end - 1)
            source[n, start] = P - 1
            start = end
        scores[n, :len(r.scores)] = torch.tensor(r.scores, dtype=torch.float32)
        valid[n, :len(r.answer_ids)] = True
    return {"input_ids": input_ids, "position_ids": position_ids, "answer_index": answer_index, "source": source,
            "scores": scores, "valid": valid}
