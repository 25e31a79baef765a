"""The reference beyond a frozen copy: its log-probs computed once before training (`--precompute_ref`)
and cached on disk, or TR-DPO's updates of it from the policy (`--sync_ref_model`, `ReferenceSync`).

The reference model is frozen, so log ref(y|x) of every pair is the same at every epoch and every
restart: computing it once saves one forward of the reference per micro-step, and the reference
engine's memory during training. Only the pairs the run trains on are scored (max_steps may use a
fraction of the data). The cache key covers the pairs' token ids, the reference weights
(files, sizes, modification times), the precision and the reduction, so any change recomputes.
Listwise rows (K ranked answers, minidpo.listwise_logps) take the same path: one column per answer.
LD-DPO (`ld_alpha`) only reweights the policy's log-probs, as TRL, LLaMA-Factory and ms-swift do: the
cached reference sums are the plain ones, so the key does not depend on it.
"""

from __future__ import annotations

import gc
import hashlib
import os

import torch
import torch.distributed as dist

from minidpo.data.collate import collate_listwise, collate_packed, collate_pairs, padded_length, row_parts
from minidpo.data.listwise import TokenizedList, are_lists, row_unit
from minidpo.errors import ConfigError
from minidpo.fsutil import atomic_file, cache_dir
from minidpo.listwise_logps import listwise_logps
from minidpo.lora import POLICY, REFERENCE, reference_adapter, syncs_adapter, twin_name
from minidpo.logprobs import pair_logps
from minidpo.metrics import progress

CACHE_DIR = cache_dir("ref_logps")


def reference_cache_key(dataset, ref_path: str, dtype: str, reduction: str, adapter: str | None = None) -> str:
    h = hashlib.sha256(f"v1|{dtype}|{reduction}".encode())
    for folder in (ref_path, adapter) if adapter else (ref_path,):  # adapter: LoRA's frozen reference adapter
        for name in sorted(os.listdir(folder)):
            st = os.stat(os.path.join(folder, name))
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for row in dataset:
        parts = row_parts(row)
        if isinstance(row, TokenizedList):  # K varies: where the row ends (pairs' keys are unchanged)
            h.update(b"L" + len(parts).to_bytes(4, "little"))
        for ids in parts:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:24]


def table_columns(dataset) -> int:
    """A pair's 2 (chosen, rejected), or the most answers of any list (a shorter list's other columns: 0)."""
    return max(len(row.answer_ids) for row in dataset) if are_lists(dataset) else 2


def _row_logps(reference, batch: dict, reduction: str) -> torch.Tensor:
    """(B, columns) of a collated batch: [chosen, rejected] of pairs, each answer's sum of listwise rows."""
    if "answer_index" in batch:
        return listwise_logps(reference, batch)
    chosen, rejected, _ = pair_logps(reference, batch, reduction)
    return torch.stack([chosen, rejected], dim=1)


@torch.no_grad()
def compute_reference_logps(reference, dataset, *, batch_size: int, pad_token_id: int, reduction: str,
                            device, rank: int = 0, world_size: int = 1, packed: bool = False,
                            pairs=None) -> torch.Tensor:
    """(N, 2) float32 table of [log ref(chosen|x), log ref(rejected|x)] for the pairs `pairs` (indices,
    the same on every rank; default: all of `dataset`); the other rows stay 0. Listwise rows: (N, Kmax),
    log ref(y_k|x) summed over answer k's tokens in column k (0 past a list's K).
    Each rank scores every world_size-th pair (length-sorted batches), then one all-reduce joins them."""
    table = torch.zeros(len(dataset), table_columns(dataset), dtype=torch.float32)
    collate = collate_listwise if are_lists(dataset) else collate_packed if packed else collate_pairs
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
        logps = _row_logps(reference, batch, reduction)
        table[indices, :logps.shape[1]] = logps.float().cpu()
    if not mine:
        table.zero_()  # this rank had no pairs of its own: it only took part in the collectives
    if world_size > 1:
        dist.all_reduce(table)  # every pair was scored by exactly one rank
    return table


def load_or_compute_reference_logps(make_reference, dataset, cfg, *, pad_token_id: int, device, rank: int,
                                    world_size: int, packed: bool = False, log=print, pairs=None) -> torch.Tensor:
    """The table for the pairs the run trains on (`pairs`, indices; default all): the cached rows where
    the cache has them, the missing ones computed with `make_reference()` (an engine built only then,
    and released on return) and added to the cache by rank 0. The cache is one (N, 2) table per key
    ((N, Kmax) for lists), NaN on rows never scored, so a longer run later scores only the pairs it adds."""
    key = reference_cache_key(dataset, cfg.ref_model_path, cfg.dtype, cfg.logps_reduction, reference_adapter(cfg))
    path = os.path.join(CACHE_DIR, f"{key}.pt")
    found = torch.tensor([int(os.path.isfile(path))])
    if world_size > 1:  # load only if every rank sees the file (nodes may not share a disk)
        dist.all_reduce(found, op=dist.ReduceOp.MIN)
    table = torch.load(path, weights_only=True) if found.item() else \
        torch.full((len(dataset), table_columns(dataset)), float("nan"))
    needed = torch.zeros(len(dataset), dtype=torch.bool)
    needed[list(range(len(dataset)) if pairs is None else pairs)] = True
    missing = (needed & table.isnan().any(1)).int()
    if world_size > 1:  # every rank scores the same set, even if the nodes' caches differ
        dist.all_reduce(missing, op=dist.ReduceOp.MAX)
    missing = missing.nonzero().flatten().tolist()
    unit = row_unit(dataset)
    if not missing:
        log(f"reference log-probs: {int(needed.sum())} {unit} from {path}")
        return table
    scored = compute_reference_logps(make_reference(), dataset, batch_size=cfg.batch_size, pad_token_id=pad_token_id,
                                     reduction=cfg.logps_reduction, device=device, rank=rank, world_size=world_size,
                                     packed=packed, pairs=missing)
    gc.collect()  # the engine holds reference cycles: free its weights now, before training allocates
    table[missing] = scored[missing]
    if rank == 0:
        with atomic_file(path) as tmp:
            torch.save(table, tmp)
        log(f"reference log-probs: computed for {len(missing)} of the {int(needed.sum())} {unit} trained on "
            f"({len(dataset)} in the data), cached in {path}")
    return table


class ReferenceSync:
    """TR-DPO (Gorbatovski et al. 2024, as TRL's sync_ref_model): every `every` optimizer steps,
    ref <- alpha * policy + (1 - alpha) * ref for each reference parameter (alpha = 1: a hard copy),
    computed in float32 and stored in the reference's dtype. `pairs` are (name, reference parameter,
    policy parameter); under ZeRO-3 each pair is gathered (collective: every rank calls `after_step`),
    changed on rank 0 and partitioned again. `state_dict` / `load_state_dict` carry the synced reference
    through a checkpoint (minidpo.checkpoint), since it cannot be recomputed from the policy's weights."""

    def __init__(self, pairs: list, alpha: float, every: int) -> None:
        self.pairs, self.alpha, self.every = pairs, alpha, every

    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        for _, ref, policy in self.pairs:
            with _gathered([ref, policy], modifier_rank=0):
                mixed = policy.data.float() if self.alpha == 1.0 else (
                    self.alpha * policy.data.float() + (1.0 - self.alpha) * ref.data.float())
                ref.data.copy_(mixed.to(ref.dtype))

    def state_dict(self) -> dict:
        """The reference parameters by name, on the CPU, on rank 0 (empty elsewhere; collective under ZeRO-3)."""
        state = {}
        for name, ref, _ in self.pairs:
            with _gathered([ref]):
                if dist.get_rank() == 0:
                    state[name] = ref.data.detach().cpu().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, ref, _ in self.pairs:
            with _gathered([ref], modifier_rank=0):
                ref.data.copy_(state[name].to(ref.device, ref.dtype))


def _gathered(params, modifier_rank=None):
    """ZeRO-3: the full parameters for the block (rank `modifier_rank`'s changes kept); otherwise a no-op."""
    import deepspeed  # heavy: imported when training

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def reference_sync(cfg, policy, reference) -> ReferenceSync | None:
    """TR-DPO's updater for this run (None without --sync_ref_model): the reference engine's parameters
    paired with the policy's of the same name, or with LoRA (no --ref_model) the frozen twin adapter's
    paired with the trained adapter's (minidpo.lora)."""
    if not cfg.sync_ref_model:
        return None
    policy_params = dict(policy.module.named_parameters())
    if syncs_adapter(cfg):
        pairs = [(name, p, policy_params[twin_name(name, REFERENCE, POLICY)])
                 for name, p in policy_params.items() if REFERENCE in name.split(".")]
    else:
        pairs = [(name, p, policy_params.get(name)) for name, p in reference.module.named_parameters()]
        bad = [name for name, p, q in pairs if q is None or _shape(p) != _shape(q)]
        if bad or len(pairs) != len(policy_params):
            raise ConfigError(f"--sync_ref_model: the reference model {cfg.ref_model_path} does not have the policy's "
                              f"parameters (first mismatch: {bad[0] if bad else 'parameter count'}); TR-DPO copies "
                              "the policy into the reference, so both must be the same architecture")
    return ReferenceSync(pairs, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps)


def _shape(p) -> tuple:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 keeps the full shape in ds_shape
