"""Reference log-probs computed once before training (`--precompute_ref`) and cached on disk.

The reference model is frozen, so log ref(y|x) of every pair is the same at every epoch and every
restart: computing it once saves one forward of the reference per micro-step, and the reference
engine's memory during training. Only the pairs the run trains on are scored (max_steps may use a
fraction of the data). The cache key covers the pairs' token ids, the reference weights
(files, sizes, modification times), the precision and the reduction, so any change recomputes.
"""

from __future__ import annotations

import gc
import hashlib
import os

import torch
import torch.distributed as dist

from minidpo.data.collate import collate_packed, collate_pairs, padded_length
from minidpo.fsutil import atomic_file, cache_dir
from minidpo.lora import reference_adapter
from minidpo.logprobs import pair_logps
from minidpo.metrics import progress

CACHE_DIR = cache_dir("ref_logps")


def reference_cache_key(dataset, ref_path: str, dtype: str, reduction: str, adapter: str | None = None) -> str:
    h = hashlib.sha256(f"v1|{dtype}|{reduction}".encode())
    for folder in (ref_path, adapter) if adapter else (ref_path,):  # adapter: LoRA's frozen reference adapter
        for name in sorted(os.listdir(folder)):
            st = os.stat(os.path.join(folder, name))
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for pair in dataset:
        for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(reference, dataset, *, batch_size: int, pad_token_id: int, reduction: str,
                            device, rank: int = 0, world_size: int = 1, packed: bool = False,
                            pairs=None) -> torch.Tensor:
    """(N, 2) float32 table of [log ref(chosen|x), log ref(rejected|x)] for the pairs `pairs` (indices,
    the same on every rank; default: all of `dataset`); the other rows stay 0.
    Each rank scores every world_size-th pair (length-sorted batches), then one all-reduce joins them."""
    table = torch.zeros(len(dataset), 2, dtype=torch.float32)
    collate = collate_packed if packed else collate_pairs
    pairs = range(len(dataset)) if pairs is None else list(pairs)
    mine = sorted(pairs[rank::world_size], key=lambda i: padded_length(dataset[i], packed))
    n_batches = -(-len(mine) // batch_size)
    if world_size > 1:  # equal batch counts on every rank: ZeRO-3 gathers parameters collectively
        counts = torch.tensor([n_batches])
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        n_batches = int(counts)
    for b in progress(range(n_batches), desc="reference log-probs", enabled=rank == 0, unit="batch"):
        indices = mine[b * batch_size:(b + 1) * batch_size] or mine[:1] or pairs[:1]  # a spare rank repeats a pair
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices], pad_token_id).items()}
        chosen, rejected, _ = pair_logps(reference, batch, reduction)
        table[indices] = torch.stack([chosen, rejected], dim=1).float().cpu()
    if not mine:
        table.zero_()  # this rank had no pairs of its own: it only took part in the collectives
    if world_size > 1:
        dist.all_reduce(table)  # every pair was scored by exactly one rank
    return table


def load_or_compute_reference_logps(make_reference, dataset, cfg, *, pad_token_id: int, device, rank: int,
                                    world_size: int, packed: bool = False, log=print, pairs=None) -> torch.Tensor:
    """The table for the pairs the run trains on (`pairs`, indices; default all): the cached rows where
    the cache has them, the missing ones computed with `make_reference()` (an engine built only then,
    and released on return) and added to the cache by rank 0. The cache is one (N, 2) table per key,
    NaN on rows never scored, so a longer run later scores only the pairs it adds."""
    key = reference_cache_key(dataset, cfg.ref_model_path, cfg.dtype, cfg.logps_reduction, reference_adapter(cfg))
    path = os.path.join(CACHE_DIR, f"{key}.pt")
    found = torch.tensor([int(os.path.isfile(path))])
    if world_size > 1:  # load only if every rank sees the file (nodes may not share a disk)
        dist.all_reduce(found, op=dist.ReduceOp.MIN)
    table = torch.load(path, weights_only=True) if found.item() else torch.full((len(dataset), 2), float("nan"))
    needed = torch.zeros(len(dataset), dtype=torch.bool)
    needed[list(range(len(dataset)) if pairs is None else pairs)] = True
    missing = (needed & table.isnan().any(1)).int()
    if world_size > 1:  # every rank scores the same set, even if the nodes' caches differ
        dist.all_reduce(missing, op=dist.ReduceOp.MAX)
    missing = missing.nonzero().flatten().tolist()
    if not missing:
        log(f"reference log-probs: {int(needed.sum())} pairs from {path}")
        return table
    scored = compute_reference_logps(make_reference(), dataset, batch_size=cfg.batch_size, pad_token_id=pad_token_id,
                                     reduction=cfg.logps_reduction, device=device, rank=rank, world_size=world_size,
                                     packed=packed, pairs=missing)
    gc.collect()  # the engine holds reference cycles: free its weights now, before training allocates
    table[missing] = scored[missing]
    if rank == 0:
        with atomic_file(path) as tmp:
            torch.save(table, tmp)
        log(f"reference log-probs: computed for {len(missing)} of the {int(needed.sum())} pairs trained on "
            f"({len(dataset)} in the data), cached in {path}")
    return table
