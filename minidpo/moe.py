"""MiniMind's router aux loss for mixture-of-experts DPO (MiniMind's `use_moe`).

MiniMind adds, in every MoE layer l, the Switch-Transformer balance loss

    aux_l = E * sum_e f_e * P_e        f_e: share of the tokens routed to expert e (top-k, counted)
                                       P_e: mean router probability of expert e over the tokens

and trains on  dpo_loss + 5e-4 * sum_l aux_l  (its `router_aux_loss_coef` 5e-4, summed over layers).

transformers 5's Qwen3-MoE (`load_balancing_loss_func`) pools the layers instead: it sums the counts and
the probabilities over all layers, divides by layers x tokens, and returns E * sum_e f_e * P_e of those
pooled means, times `router_aux_loss_coef`. That is neither the sum nor exactly the mean of the
per-layer losses (it equals their mean only when every layer routes alike, and is then 1/L of MiniMind's
sum). So for a converted MiniMind model minidpo computes MiniMind's sum itself, from the router logits
its hooks capture, and the model's config marks it (`router_aux_loss_sum_over_layers`). In transformers'
terms MiniMind's weighting is roughly `router_aux_loss_coef = 5e-4 * num_hidden_layers` (exact for one
layer or uniformly routing layers); `--aux_loss_coef` overrides the 5e-4.

Routing is per token (each token's router logits depend on its own hidden state only), so the
shared-prompt packed forward routes every token exactly as the two-sequence forward does. The loss is
a weighted mean over tokens, and the weights make the two equal: padding counts 0, a packed row's prompt
tokens count 2 (they stand for the prompt of both sequences), answer tokens 1. Unlike MiniMind, which
pads every sequence to max_seq_len and counts the padding in f and P, padding never counts here.
"""

from __future__ import annotations

import torch

from minidpo.data.collate import CHOSEN, PROMPT, REJECTED, is_packed

SUM_OVER_LAYERS = "router_aux_loss_sum_over_layers"  # config flag written by minidpo.sources.minimind


def sums_over_layers(config) -> bool:
    """True when the model's router loss is MiniMind's (per layer, summed over layers)."""
    return bool(getattr(config, SUM_OVER_LAYERS, False))


def token_weights(batch: dict) -> torch.Tensor:
    """(rows * T,) float weight of each position in the router statistics (module docstring)."""
    if is_packed(batch):
        seg = batch["segment_ids"]
        w = (seg == PROMPT).float() * 2 + ((seg == CHOSEN) | (seg == REJECTED)).float()
    else:
        w = batch["attention_mask"].float()
    return w.reshape(-1)


def switch_loss(router_logits: torch.Tensor, weights: torch.Tensor, top_k: int) -> torch.Tensor:
    """E * sum_e f_e * P_e of one layer; router_logits (N, E), weights (N,)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    E = probs.shape[-1]
    chosen = torch.zeros_like(probs).scatter_(1, probs.topk(top_k, dim=-1).indices, 1.0)
    total = weights.sum().clamp(min=1e-9)
    f = (chosen * weights[:, None]).sum(0) / total
    P = (probs * weights[:, None]).sum(0) / total
    return E * (f * P).sum()


class RouterLoss:
    """Captures every MoE layer's router logits during the model's forward and turns them into
    MiniMind's summed aux loss for the batch. `clear()` before the forward, `loss(batch)` after it."""

    def __init__(self, model):
        module = getattr(model, "module", model)
        self.top_k = int(module.config.num_experts_per_tok)
        experts = int(module.config.num_experts)
        self.logits: list[torch.Tensor] = []
        self.routers = [m for name, m in module.named_modules()
                        if name.endswith(".mlp.gate") and getattr(m, "weight", None) is not None
                        and m.weight.shape[0] == experts]
        if not self.routers:
            raise ValueError(f"{type(module).__name__}: no MoE router (`mlp.gate` with {experts} outputs) to hook")
        self.handles = [r.register_forward_hook(self._keep) for r in self.routers]

    @classmethod
    def attach(cls, model) -> "RouterLoss | None":
        """A RouterLoss for a model whose config asks for MiniMind's weighting, else None."""
        config = getattr(getattr(model, "module", model), "config", None)
        return cls(model) if config is not None and sums_over_layers(config) else None

    def _keep(self, _module, _args, out):
        self.logits.append(out[0] if isinstance(out, tuple) else out)

    def clear(self) -> None:
        self.logits.clear()

    def loss(self, batch: dict) -> torch.Tensor:
        """sum over layers of the layer's balance loss, for the forward since the last clear()."""
        if len(self.logits) != len(self.routers):  # e.g. a second forward without clear()
            raise RuntimeError(f"captured {len(self.logits)} router outputs for {len(self.routers)} MoE layers")
        weights = token_weights(batch).to(self.logits[0].device)
        return sum(switch_loss(logits.reshape(-1, logits.shape[-1]), weights, self.top_k) for logits in self.logits)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
