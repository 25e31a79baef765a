"""Shared-prompt attention without a T x T mask: two causal attention calls per layer.

A packed row is [prompt, chosen, rejected, padding]. Each answer must see exactly [prompt, itself], as
in its own sequence. A dense 4D mask says so, but sdpa then runs every one of the T x T scores (no
kernel skips masked blocks of an arbitrary mask: on a CPU that is ~2x the causal kernel's time at
6k tokens; on a GPU it also rules out the flash kernels) and the mask itself is T x T per row.

Here the attention function gathers each row's [prompt, chosen] and [prompt, rejected] (both
right-padded to the batch's longest) and runs causal sdpa on each: causal with right padding is exact
for every real query, and `is_causal` takes the fastest kernel there is. The outputs are put back in
row order; the prompt's queries are computed again in the second call and dropped. Scores computed:
(P+C)^2/2 + (P+R)^2/2 against the dense mask's (P+C+R)^2 (4 units against 9 when P = C = R). No mask
tensor is ever built.

The attention function is registered with transformers' AttentionInterface as `minidpo_packed`. It
only takes this path when a forward passes `minidpo_layout=` (minidpo.logprobs.packed_logps does);
every other call (generation, two-sequence batches) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minidpo.data.collate import CHOSEN, PROMPT, REJECTED

NAME = "minidpo_packed"


@dataclass
class PackedLayout:
    """Where each causal call's tokens sit in the packed rows, and where the outputs go back.

    first:  (B, L1) positions of [prompt, chosen], right-padded (repeating the last one);
    second: (B, L2) positions of [prompt, rejected], likewise;
    back:   (B, T) for every row position, its output's index in cat(first's outputs, second's);
    calls:  attention calls that used this layout (a model that does not pass its keyword arguments
            down to attention would never use it: packed_logps checks this after the forward).
    """

    first: torch.Tensor
    second: torch.Tensor
    back: torch.Tensor
    calls: int = 0


def packed_layout(segment_ids: torch.Tensor) -> PackedLayout:
    """The layout of collate_packed rows (segments PROMPT*, CHOSEN*, REJECTED*, PADDING*)."""
    B, T = segment_ids.shape
    device = segment_ids.device
    P = (segment_ids == PROMPT).sum(1)
    C = (segment_ids == CHOSEN).sum(1)
    R = (segment_ids == REJECTED).sum(1)
    L1, L2 = int((P + C).max()), int((P + R).max())
    j1 = torch.arange(L1, device=device).expand(B, L1)
    first = torch.minimum(j1, (P + C - 1)[:, None])
    j2 = torch.arange(L2, device=device).expand(B, L2)
    j2 = torch.minimum(j2, (P + R - 1)[:, None])
    second = torch.where(j2 < P[:, None], j2, j2 + C[:, None])  # skip the chosen tokens
    t = torch.arange(T, device=device).expand(B, T)
    back = torch.where(segment_ids == REJECTED, L1 + t - C[:, None], t)  # rejected: after the prompt, in call 2
    back = torch.where(t < (P + C + R)[:, None], back, 0)  # padding: any output (never attended to, never scored)
    return PackedLayout(first, second, back)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) at positions index (B, L) -> (B, H, L, D)."""
    B, H, _, D = x.shape
    return x.gather(2, index[:, None, :, None].expand(B, H, index.shape[1], D))


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                minidpo_layout: PackedLayout | None = None, **kwargs):
    """transformers attention-function signature: query (B, H, T, D), key/value (B, H_kv, T, D) ->
    ((B, T, H, D), None)."""
    if minidpo_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("softcap") is not None:  # as transformers' sdpa: soft-capped scores need eager attention
        raise ValueError("minidpo_packed (sdpa) attention does not support softcap: load the model with eager attention")
    layout = minidpo_layout
    layout.calls += 1
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    outputs = []
    for index in (layout.first, layout.second):
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            _take(query, index), _take(key, index), _take(value, index), dropout_p=dropout, scale=scaling,
            is_causal=True, **gqa))
    out = _take(torch.cat(outputs, dim=2), layout.back)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `minidpo_packed` a transformers attention implementation (masks built as for sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, packed_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_split_attention(module) -> bool:
    """Switch a transformers model on sdpa to `minidpo_packed` (the same numbers on every call that
    passes no layout); True when the model now runs it. Not written to config.json by save_pretrained
    (transformers keeps the implementation out of the saved config)."""
    config = module.config
    impl = getattr(config, "_attn_implementation", None)
    if impl == NAME:
        return True
    if impl != "sdpa" or getattr(module, "_minidpo_split_attention", True) is False:
        return False
    register()
    config._attn_implementation = NAME
    return True


def stop_split_attention(module) -> None:
    """Back to plain sdpa for good (the model did not pass the layout down to its attention)."""
    module._minidpo_split_attention = False
    if getattr(module.config, "_attn_implementation", None) == NAME:
        module.config._attn_implementation = "sdpa"
