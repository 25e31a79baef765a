"""Which pairs go in which batch, on which rank: a pure function of (seed, epoch, rank, world_size)."""

from __future__ import annotations

import random
from collections.abc import Sequence

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

    `lengths[i]` is pair i's longer sequence (PreferenceDataset.lengths).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batch_plan arguments: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    per_step = batch_size * world_size
    if len(lengths) < per_step:
        raise ValueError(f"only {len(lengths)} pairs: fewer than one step of batch_size {batch_size} x "
                         f"{world_size} ranks; use more data or a smaller batch size")
    rng = random.Random(f"minidpo:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = per_step * MEGA_CHUNK_STEPS
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: -lengths[i])]
    n_steps = len(order) // per_step
    steps = [order[s * per_step:(s + 1) * per_step] for s in range(n_steps)]
    rng.shuffle(steps)
    return [step[rank * batch_size:(rank + 1) * batch_size] for step in steps]
