"""Which pairs go in which batch, on which rank: a pure function of (seed, epoch, rank, world_size).

`Batching` holds the plain values a plan depends on; `epoch_micro_batches` is one rank's micro-batches of
one epoch, with fixed batches (`batch_plan`) or a token budget (`budget_steps`), so a resumed run skips
exactly what was done. Pair lengths come from minidpo.data.collate.padded_length; listwise rows
([prompt, answer_1..K]) are planned the same way, by their row's length (`unit` "lists" in messages).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MEGA_CHUNK_STEPS = 50  # steps per length-sorted chunk


def batch_plan(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    group_by_length: bool = True,
    kinds: Sequence[str] | None = None,
    unit: str = "pairs",
) -> list[list[int]]:
    """This rank's batches (lists of pair indices) for one epoch.

    - Deterministic: the same arguments give the same plan, so a resumed run skips the first k batches.
    - Every batch holds exactly `batch_size` pairs, and every rank gets the same number of batches
      (DeepSpeed's collectives need equal step counts): the fewer than batch_size * world_size pairs
      left over after shuffling are not used this epoch (a different set each epoch).
    - Ranks get disjoint pairs. With group_by_length, the pairs are shuffled, cut into chunks of
      MEGA_CHUNK_STEPS steps, sorted by length inside each chunk and cut into batches, so a batch holds
      similar lengths (little padding); the batches of one step (one per rank) come from neighbouring
      sorted positions, so ranks wait little on each other; then the order of steps is shuffled.
    - `kinds` (each pair's kind, e.g. "pairs" / "unpaired examples"; None: one kind): a step (every rank's
      batch at one index) holds one kind, so every rank runs the same path at the same time (KTO's batch KL
      is a collective). Each kind is shuffled, grouped and cut on its own (its leftover dropped), then the
      steps of all kinds are shuffled together; one kind gives exactly the plan without `kinds`.
    - `unit`: what the rows are called in the error message without `kinds` ("pairs", "lists").

    `lengths[i]` is pair i's longer sequence (PreferenceDataset.lengths).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batch_plan arguments: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    per_step = batch_size * world_size
    rng = random.Random(f"minidpo:{seed}:{epoch}")
    steps = []
    for kind, members in _by_kind(kinds, len(lengths), unit):
        if len(members) < per_step:
            raise ValueError(f"only {len(members)} {kind}: fewer than one step of batch_size {batch_size} x "
                             f"{world_size} ranks; use more data or a smaller batch size")
        order = list(members)
        rng.shuffle(order)
        if group_by_length:
            chunk = per_step * MEGA_CHUNK_STEPS
            order = [i for s in range(0, len(order), chunk)
                     for i in sorted(order[s:s + chunk], key=lambda i: -lengths[i])]
        steps += [order[s * per_step:(s + 1) * per_step] for s in range(len(order) // per_step)]
    rng.shuffle(steps)
    return [step[rank * batch_size:(rank + 1) * batch_size] for step in steps]


def _by_kind(kinds: Sequence[str] | None, n: int, unit: str = "pairs") -> list[tuple[str, list[int]]]:
    """(kind, its pair indices in order) for each kind, in name order; all n as `unit` without kinds."""
    if kinds is None:
        return [(unit, list(range(n)))]
    if len(kinds) != n:
        raise ValueError(f"{len(kinds)} kinds for {n} pairs")
    return [(kind, [i for i, k in enumerate(kinds) if k == kind]) for kind in sorted(set(kinds))]


# --- token-budget batches (--max_tokens_per_batch) --------------------------------------------------

def padded_cost(longest: int, pairs: int, pad_to_multiple_of: int = 8) -> int:
    """Positions a batch of `pairs` packed rows computes: pairs x the longest row rounded up (as collated)."""
    m = max(1, pad_to_multiple_of)
    return pairs * (-(-longest // m) * m)


def _budget_batches(order: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut `order` greedily into batches whose padded cost stays within `max_tokens`; a pair (or list) that
    alone exceeds the budget travels alone."""
    batches, current, longest = [], [], 0
    for i in order:
        grown = max(longest, lengths[i])
        if current and padded_cost(grown, len(current) + 1) > max_tokens:
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def _budget_steps_one_epoch(lengths, max_tokens, grad_accum, world_size, seed, epoch, group_by_length):
    per_step = grad_accum * world_size
    rng = random.Random(f"minidpo:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:  # chunks of about MEGA_CHUNK_STEPS steps' pairs, as in batch_plan
        per_batch = max(1, max_tokens // max(1, round(sum(lengths) / max(1, len(lengths)))))
        chunk = per_step * per_batch * MEGA_CHUNK_STEPS
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: -lengths[i])]
    batches = _budget_batches(order, lengths, max_tokens)
    # a step = per_step neighbouring batches (similar sizes, so ranks wait little); the rest is dropped
    steps = [batches[s * per_step:(s + 1) * per_step] for s in range(len(batches) // per_step)]
    rng.shuffle(steps)
    return steps


def budget_steps(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    grad_accum: int,
    world_size: int,
    seed: int,
    epoch: int,
    epochs: int = 1,
    group_by_length: bool = True,
    unit: str = "pairs",
) -> list[list[list[int]]]:
    """All ranks' micro-batches of one epoch's optimizer steps, for a budget of padded packed positions.

    steps[s][m * world_size + r] is rank r's m-th micro-batch of step s (m < grad_accum). A micro-batch
    holds as many pairs as fit `max_tokens` positions (padded_cost); a pair longer than the budget alone.
    Every epoch has the same number of steps, the smallest that any of `epochs` epochs gives (a
    different shuffle packs differently), so the schedule and a resume know the step count in advance.
    A pure function of its arguments: resume skips exactly what was done.
    `lengths[i]` is pair i's packed row length (prompt + both answers), or list i's (prompt + its K
    answers: collate_listwise's row, padded the same way); `unit` names the rows in the error message.
    """
    if max_tokens < 1 or grad_accum < 1 or world_size < 1 or epochs < 1:
        raise ValueError(f"bad budget_steps arguments: max_tokens={max_tokens}, grad_accum={grad_accum}, "
                         f"world_size={world_size}, epochs={epochs}")
    n_steps = min(len(_budget_steps_one_epoch(lengths, max_tokens, grad_accum, world_size, seed, e, group_by_length))
                  for e in range(epochs))
    if n_steps == 0:
        raise ValueError(f"{len(lengths)} {unit} make fewer than one step of {grad_accum} x {world_size} "
                         f"micro-batches of up to {max_tokens} tokens; use more data or a smaller budget")
    steps = _budget_steps_one_epoch(lengths, max_tokens, grad_accum, world_size, seed, epoch, group_by_length)
    return steps[:n_steps]


def rank_micro_batches(steps: list[list[list[int]]], rank: int, world_size: int) -> list[list[int]]:
    """Rank `rank`'s micro-batches, in order, from budget_steps' steps."""
    if not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world_size {world_size}")
    return [batch for step in steps for batch in step[rank::world_size]]


@dataclass(frozen=True)
class Batching:
    """The settings a plan depends on (minidpo.config.BatchSettings + grad_accum's and epochs' values)."""

    batch_size: int
    grad_accum: int
    max_tokens_per_batch: int  # 0: fixed batches of batch_size pairs
    seed: int
    epochs: int
    group_by_length: bool = True
    unit: str = "pairs"  # what a row is, in messages: "pairs" or "lists" (listwise rows)

    def epoch_micro_batches(self, lengths: Sequence[int], packed_lengths: Sequence[int], epoch: int, rank: int,
                            world_size: int, kinds: Sequence[str] | None = None) -> list[list[int]]:
        """Rank `rank`'s micro-batches (pair indices) for one epoch. `lengths`: what a batch pads to per pair
        (packed rows: prompt + both answers; plain rows: prompt + the longer answer); `packed_lengths`:
        the packed row lengths, which a token budget counts whichever forward runs; `kinds`: batch_plan's
        (fixed batches only)."""
        if self.max_tokens_per_batch:  # micro-batch sizes vary
            if kinds is not None and len(set(kinds)) > 1:
                raise ValueError("a token budget does not keep one kind of row per micro-batch")
            return rank_micro_batches(self.epoch_steps(packed_lengths, epoch, world_size), rank, world_size)
        return batch_plan(lengths, self.batch_size, seed=self.seed, epoch=epoch, rank=rank, world_size=world_size,
                          group_by_length=self.group_by_length, kinds=kinds, unit=self.unit)

    def epoch_steps(self, packed_lengths: Sequence[int], epoch: int, world_size: int) -> list[list[list[int]]]:
        """One epoch's optimizer steps under a token budget: steps[s][m * world_size + r] (budget_steps)."""
        return budget_steps(packed_lengths, self.max_tokens_per_batch, grad_accum=self.grad_accum,
                            world_size=world_size, seed=self.seed, epoch=epoch, epochs=self.epochs,
                            group_by_length=self.group_by_length, unit=self.unit)
