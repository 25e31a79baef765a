"""Per-sequence response log-probabilities from a causal LM's logits.

Convention used across minidpo: `loss_mask[n, t] == 1` when token `input_ids[n, t]` belongs to the
response being scored. Its log-probability comes from the logits at position t - 1, so position 0
can never be scored (a response always follows at least one prompt token).
"""

from __future__ import annotations

import functools
import inspect

import torch

from minidpo.data.collate import CHOSEN, PADDING, REJECTED, is_packed
from minidpo.packed_attention import NAME as SPLIT_ATTENTION
from minidpo.packed_attention import packed_layout, stop_split_attention, use_split_attention

REDUCTIONS = ("sum", "mean")


CHUNK_ELEMENTS = 1 << 22  # float32 elements of logits handled at once (16 MB)


def _logsumexps(logits_of, n: int, step: int, collision: bool):
    """(n,) logsumexp of each row of logits, `logits_of(start, stop)` giving rows start..stop-1; with
    `collision` also log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z) per row (WPO's normaliser)."""
    lse, squares = [], []
    for s in range(0, n, step):
        z = logits_of(s, s + step).float()
        lse.append(torch.logsumexp(z, dim=-1))
        if collision:
            squares.append(torch.logsumexp(2.0 * z, dim=-1))
    lse = torch.cat(lse)
    return lse, (torch.cat(squares) - 2.0 * lse if collision else None)


class _PickedLogprobs(torch.autograd.Function):
    """log softmax(logits[n, source[n, j]])[target[n, j]] for every (n, j).

    Autograd's own version keeps float32 copies of the logits for the backward and builds several
    logits-sized temporaries there (a softmax, a scatter of the picked entries, their sum). Here the
    forward keeps only the logits and their (N, T) logsumexp, and the backward writes the gradient,
    softmax and all, chunk by chunk into one logits-sized tensor. A position may predict several
    targets (in packed rows the prompt's last token predicts both answers' first tokens).
    With `collision`, also returns log sum_v p_v^2 at each (n, j)'s position (no gradient).
    """

    @staticmethod
    def forward(ctx, logits, source, targets, collision=False):
        N, T, V = logits.shape
        flat = logits.reshape(N * T, V)
        lse, squares = _logsumexps(lambda a, b: flat[a:b], N * T, max(1, CHUNK_ELEMENTS // V), collision)
        index = source + torch.arange(N, device=logits.device)[:, None] * T  # (N, J) rows of `flat`
        picked = flat[index, targets].float()
        ctx.save_for_backward(logits, lse, index, targets)
        if not collision:
            return picked - lse[index]
        squares = squares[index]
        ctx.mark_non_differentiable(squares)
        return picked - lse[index], squares

    @staticmethod
    def backward(ctx, grad_out, *_):
        logits, lse, index, targets = ctx.saved_tensors
        N, T, V = logits.shape
        g = grad_out.float()
        weight = torch.zeros_like(lse).index_add_(0, index.flatten(), g.flatten())  # summed per predicting row
        grad = torch.empty_like(logits).reshape(N * T, V)
        flat = logits.reshape(N * T, V)
        rows, cols, values = index.flatten(), targets.flatten(), g.flatten()
        step = max(1, CHUNK_ELEMENTS // V)
        for s in range(0, N * T, step):
            part = (flat[s:s + step].float() - lse[s:s + step, None]).exp_().mul_(-weight[s:s + step, None])
            here = (rows >= s) & (rows < s + step)
            part.index_put_((rows[here] - s, cols[here]), values[here], accumulate=True)
            grad[s:s + step] = part
        return grad.reshape(N, T, V), None, None, None


class _HeadLogprobs(torch.autograd.Function):
    """`picked_logprobs` of `hidden @ weight.T` without ever holding those logits: the LM head is applied
    chunk by chunk to just the positions that predict a target, in the forward for the logsumexp and
    again in the backward for the softmax. Keeps the final hidden states (which the model's backward
    needs anyway) and one float per predicting position."""

    @staticmethod
    def forward(ctx, hidden, weight, source, targets, collision=False):
        N, T, H = hidden.shape
        rows = (source + torch.arange(N, device=hidden.device)[:, None] * T).flatten()
        used, inverse = torch.unique(rows, return_inverse=True)
        h = hidden.reshape(N * T, H)[used]  # (U, H): the positions whose logits are needed
        lse, squares = _logsumexps(lambda a, b: h[a:b] @ weight.T, len(h), max(1, CHUNK_ELEMENTS // weight.shape[0]),
                                   collision)
        flat_targets = targets.flatten()
        # the target's logit as the matmul would give it: float accumulation, rounded to the working dtype
        picked = (h[inverse].float() * weight[flat_targets].float()).sum(-1).to(hidden.dtype).float()
        ctx.save_for_backward(hidden, weight, used, inverse, flat_targets, lse)
        if not collision:
            return (picked - lse[inverse]).view(targets.shape)
        squares = squares[inverse].view(targets.shape)
        ctx.mark_non_differentiable(squares)
        return (picked - lse[inverse]).view(targets.shape), squares

    @staticmethod
    def backward(ctx, grad_out, *_):
        hidden, weight, used, inverse, flat_targets, lse = ctx.saved_tensors
        N, T, H = hidden.shape
        g = grad_out.float().flatten()
        h = hidden.reshape(N * T, H)[used]
        per_row = torch.zeros(len(used), device=g.device).index_add_(0, inverse, g)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        need_w = ctx.needs_input_grad[1]  # a frozen head (LoRA) needs no weight gradient
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        step = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for s in range(0, len(h), step):  # the logsumexp's share: -softmax * (summed upstream gradient)
            part = ((h[s:s + step] @ weight.T).float() - lse[s:s + step, None]).exp_().mul_(-per_row[s:s + step, None])
            part = part.to(weight.dtype)
            grad_h[s:s + step] = part @ weight
            if need_w:
                grad_w += part.T @ h[s:s + step]
        grad_h.index_add_(0, inverse, g[:, None] * weight[flat_targets].float())  # the picked logit's share
        if need_w:
            grad_w.index_add_(0, flat_targets, g[:, None] * h[inverse].float())
        grad_hidden = torch.zeros_like(hidden).reshape(N * T, H)
        grad_hidden[used] = grad_h.to(hidden.dtype)
        return grad_hidden.reshape(N, T, H), grad_w.to(weight.dtype) if need_w else None, None, None, None


def picked_logprobs(logits: torch.Tensor, source: torch.Tensor, targets: torch.Tensor, *, collision: bool = False):
    """(N, J) float32 log-probabilities of `targets` under the logits at positions `source`.

    Args:
        logits: (N, T, V), any float dtype. source, targets: (N, J) positions in [0, T) and token ids.
        collision: also return (N, J) log sum_v p_v^2 at those positions (detached; WPO's weights need it).
    Never materialises a full-vocabulary log_softmax, nor float32 copies of the logits beyond one chunk.
    """
    return _PickedLogprobs.apply(logits, source, targets, collision)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, collision: bool = False):
    """log softmax(logits)[target] at every position: logits (N, T, V), targets (N, T) -> (N, T) float32
    (and, with `collision`, log sum_v p_v^2 at every position, as picked_logprobs)."""
    N, T, _ = logits.shape
    source = torch.arange(T, device=logits.device).expand(N, T)
    return picked_logprobs(logits, source, targets, collision=collision)


def sequence_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    reduction: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce response-token log-probs to one number per sequence.

    Args:
        logits: (N, T, V) model output for `input_ids`.
        input_ids: (N, T). loss_mask: (N, T), 1 on response tokens (see module docstring).
        reduction: "sum" is the DPO definition log pi(y|x); "mean" divides by the response length,
            which reproduces MiniMind's later (length-normalised) variant.
    Returns:
        (logps, n_tokens): (N,) float32 reduced log-probs and (N,) response-token counts.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown log-prob reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
    mask = loss_mask[:, 1:].to(torch.float32)
    per_token = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    logps = (per_token * mask).sum(-1)
    n_tokens = mask.sum(-1)
    if reduction == "mean":
        logps = logps / n_tokens.clamp(min=1.0)
    return logps, n_tokens


def _reduce(logps: torch.Tensor, n_tokens: torch.Tensor, reduction: str) -> torch.Tensor:
    if (n_tokens == 0).any():  # the data layer drops such pairs; never train on one that slipped through
        raise RuntimeError("a sequence in this batch has no response tokens")
    return logps / n_tokens if reduction == "mean" else logps


def answer_logps(chosen: tuple, rejected: tuple, reduction: str, *, ld_alpha: float | None = None,
                 weights: bool = False):
    """Per-pair log-probs from per-token ones. chosen, rejected: (per_token, mask, collision or None), each
    (B, J), row i of both being pair i; mask is 1 on that answer's tokens. Returns (chosen_logps,
    rejected_logps), plus WPO's pair weights with `weights`.

    ld_alpha (LD-DPO, Liu et al. 2024): an answer's tokens past the shorter answer's length l_p count
    ld_alpha times: sum - (1 - ld_alpha) * (sum past l_p), which is the plain sum exactly at 1.
    weights (WPO, Zhou et al. 2024, as TRL's use_weighting): min(1, exp(mean_w + mean_l)), mean = the
    answer's mean over its tokens of log p(token) - log sum_v p_v^2; detached."""
    if ld_alpha is not None and reduction != "sum":
        raise ValueError(f"ld_alpha needs the summed log-probs (reduction 'sum'), not {reduction!r}")
    parts = (chosen, rejected)
    sums = [(per_token * mask).sum(-1) for per_token, mask, _ in parts]
    counts = [mask.sum(-1) for _, mask, _ in parts]
    if ld_alpha is not None:
        shared = torch.minimum(*counts)[:, None]  # l_p: the shorter answer's token count
        sums = [total - (1.0 - ld_alpha) * (per_token * mask * (mask.cumsum(-1) > shared)).sum(-1)
                for total, (per_token, mask, _) in zip(sums, parts)]
    logps = tuple(_reduce(total, n, reduction) for total, n in zip(sums, counts))
    if not weights:
        return logps
    with torch.no_grad():
        means = [((per_token.detach() - squares) * mask).sum(-1) / n for (per_token, mask, squares), n in
                 zip(parts, counts)]
        return (*logps, torch.exp(means[0] + means[1]).clamp(max=1.0))


def concatenated_logps(model, batch: dict, reduction: str, *, ld_alpha: float | None = None, weights: bool = False):
    """One forward over [chosen; rejected]; returns (chosen_logps, rejected_logps, aux_loss or None), and
    with `weights` WPO's pair weights last (see answer_logps for ld_alpha and weights)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    mask = batch["loss_mask"][:, 1:].to(torch.float32)  # as sequence_logprobs: position t scores token t + 1
    per_token = token_logprobs(out.logits[:, :-1], batch["input_ids"][:, 1:], collision=weights)
    per_token, squares = per_token if weights else (per_token, None)
    half = mask.shape[0] // 2
    chosen, rejected = ((per_token[rows], mask[rows], None if squares is None else squares[rows])
                        for rows in (slice(None, half), slice(half, None)))
    chosen_logps, rejected_logps, *rest = answer_logps(chosen, rejected, reduction, ld_alpha=ld_alpha, weights=weights)
    return (chosen_logps, rejected_logps, getattr(out, "aux_loss", None), *rest)


# ---------------------------------------------------------------------------------------------------
# Shared-prompt forward: one packed row [prompt, chosen, rejected] per pair (minidpo.data.collate_packed)

PACKED_ATTENTION = ("sdpa", "eager", SPLIT_ATTENTION)  # sdpa runs as SPLIT_ATTENTION once packed


def _inner_model(model):
    """The transformers model behind DeepSpeed's engine (`.module`) and PEFT's wrapper (LoRA)."""
    module = getattr(model, "module", model)
    get_base_model = getattr(type(module), "get_base_model", None)
    return get_base_model(module) if get_base_model else module


def packed_forward_unsupported(model) -> str | None:
    """Why `model` cannot take the packed forward (None when it can). It needs sdpa attention (run as
    two causal calls, minidpo.packed_attention) or eager attention (given a 4D mask), and must not
    need the 2D padding mask (transformers' own MoE router losses do; MiniMind's, computed by
    minidpo.moe from per-token routing, does not)."""
    config = _inner_model(model).config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in PACKED_ATTENTION:
        return f"attention implementation {impl!r} cannot run packed rows (needs sdpa or eager)"
    if getattr(config, "output_router_logits", None):
        return "mixture-of-experts router losses need the plain padding mask"
    return None


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask (0 = attend, dtype's min = hidden) for packed rows: causal, padding
    hidden, and rejected tokens blind to chosen ones, so each answer sees exactly [prompt, itself] as in
    its own sequence. Additive in the model's dtype, as eager attention needs it and as sdpa would
    otherwise convert a boolean one again in every layer. Padding rows see the prompt, so no row is
    fully masked (a fully masked row would give NaNs)."""
    T = segment_ids.shape[1]
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (causal & (k != PADDING) & ~((q == REJECTED) & (k == CHOSEN)))[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


@functools.lru_cache(maxsize=None)
def _forward_parameters(module_type: type) -> frozenset:
    return frozenset(inspect.signature(module_type.forward).parameters)


def forward_kwargs(model) -> frozenset:
    """The keyword arguments the (DeepSpeed-wrapped) model's forward takes; looked up once per class."""
    return _forward_parameters(type(_inner_model(model)))


def _fused_head(model):
    """(decoder, LM-head weight) when the LM head can be fused into the log-probs: a decoder to take the
    final hidden states from, `logits_to_keep` to skip the model's own head, and a weight that is not
    partitioned by ZeRO-3 (it is only gathered inside the head's own forward). Else None."""
    module = _inner_model(model)
    if getattr(module, "_minidpo_fused_head", True) is False or "logits_to_keep" not in forward_kwargs(model):
        return None
    get_decoder = getattr(module, "get_decoder", None)
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder else None
    if decoder is None or head is None or decoder is module or hasattr(head.weight, "ds_id"):
        return None
    return decoder, head.weight


def _logprobs_from_final_hidden(model, kwargs: dict, source: torch.Tensor, targets: torch.Tensor, collision: bool):
    """Per-token log-probs via the fused head (with `collision`, and log sum p^2), or None when this model's
    logits turn out not to be exactly hidden @ weight.T (scaled or soft-capped logits, an unusual head):
    checked on the first call."""
    fused = _fused_head(model)
    if fused is None:
        return None
    decoder, weight = fused
    captured = {}

    def keep(_module, _args, out):
        captured["hidden"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    handle = decoder.register_forward_hook(keep)
    try:
        out = model(**kwargs, logits_to_keep=1)  # the model's own head on one position only
    finally:
        handle.remove()
    hidden, module = captured.get("hidden"), _inner_model(model)
    if not hasattr(module, "_minidpo_fused_head"):
        with torch.no_grad():
            ok = hidden is not None and hidden.shape[:2] == targets.shape and torch.allclose(
                (hidden[:, -1] @ weight.T).float(), out.logits[:, -1].float(), rtol=1e-2, atol=1e-3)
        module._minidpo_fused_head = bool(ok)
        if not ok:
            return None
    return _HeadLogprobs.apply(hidden, weight, source, targets, collision)


def packed_logps(model, batch: dict, reduction: str, *, ld_alpha: float | None = None, weights: bool = False):
    """One forward over packed [prompt, chosen, rejected] rows; returns (chosen_logps, rejected_logps, None),
    and with `weights` WPO's pair weights last (see answer_logps for ld_alpha and weights). Equal to
    `concatenated_logps` on the same pairs (tests/test_packed.py), with the prompt computed once instead of twice. Where the model allows (`_fused_head`), the LM head is applied only to the
    positions that predict an answer token and its logits are never stored; otherwise the model's
    logits from the first answer-predicting position on are used."""
    input_ids, segments, source = batch["input_ids"], batch["segment_ids"], batch["source"]
    dtype = next(getattr(model, "module", model).parameters()).dtype
    kwargs = dict(input_ids=input_ids, position_ids=batch["position_ids"], use_cache=False)
    inner, layout = _inner_model(model), None
    if use_split_attention(inner):  # two causal calls per layer instead of a T x T mask (packed_attention.py)
        layout = packed_layout(segments)
        # a 4D mask is taken as given, so transformers builds none; the attention function ignores it
        kwargs.update(minidpo_layout=layout, attention_mask=torch.zeros(len(segments), 1, 1, 1, dtype=dtype,
                                                                        device=segments.device))
    else:
        kwargs["attention_mask"] = packed_attention_mask(segments, dtype)
    answer = (segments == CHOSEN) | (segments == REJECTED)
    per_token = _logprobs_from_final_hidden(model, kwargs, torch.where(answer, source, 0), input_ids, weights)
    if per_token is None:
        first = int(torch.where(answer, source, input_ids.shape[1]).min())  # earliest position whose logits count
        if "logits_to_keep" in forward_kwargs(model):
            kwargs["logits_to_keep"] = input_ids.shape[1] - first
        else:
            first = 0
        logits = model(**kwargs).logits  # positions first..T-1
        per_token = picked_logprobs(logits, (source - first).clamp(min=0), input_ids, collision=weights)
    if layout is not None and layout.calls == 0:  # this model does not pass keywords down to its attention
        stop_split_attention(inner)
        return packed_logps(model, batch, reduction, ld_alpha=ld_alpha, weights=weights)
    per_token, squares = per_token if weights else (per_token, None)
    chosen, rejected = ((per_token, (segments == segment).float(), squares) for segment in (CHOSEN, REJECTED))
    chosen_logps, rejected_logps, *rest = answer_logps(chosen, rejected, reduction, ld_alpha=ld_alpha, weights=weights)
    return (chosen_logps, rejected_logps, None, *rest)


def pair_logps(model, batch: dict, reduction: str, *, ld_alpha: float | None = None, weights: bool = False):
    """(chosen_logps, rejected_logps, aux_loss or None) for a batch from collate_pairs or collate_packed;
    with `weights`, WPO's pair weights as a 4th item. ld_alpha: LD-DPO's log-probs (see answer_logps)."""
    if is_packed(batch):
        return packed_logps(model, batch, reduction, ld_alpha=ld_alpha, weights=weights)
    return concatenated_logps(model, batch, reduction, ld_alpha=ld_alpha, weights=weights)
