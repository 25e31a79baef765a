"""Shared-prompt packed forward: layout by hand, and log-probs / gradients equal to the plain
concatenated forward on real models (sdpa and eager attention, fp32)."""

from __future__ import annotations

import random

import pytest
import torch

from minidpo.data import TokenizedPair, collate_pairs
from minidpo.data.collate import CHOSEN, PADDING, PROMPT, REJECTED, collate_packed
from minidpo.logprobs import concatenated_logps, packed_attention_mask, packed_forward_unsupported, packed_logps

PAD = 0


def test_packed_layout_by_hand():
    b = collate_packed([TokenizedPair([5, 6], [7, 8, 2], [9, 2]), TokenizedPair([4], [3, 2], [2])], PAD,
                       pad_to_multiple_of=1)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 2, 9, 2], [4, 3, 2, 2, PAD, PAD, PAD]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 1, 0, 0, 0]]
    P, C, R, X = PROMPT, CHOSEN, REJECTED, PADDING
    assert b["segment_ids"].tolist() == [[P, P, C, C, C, R, R], [P, C, C, R, X, X, X]]
    # chosen tokens are predicted from the previous position; the first rejected one from the prompt's end
    assert b["source"].tolist() == [[0, 0, 1, 2, 3, 1, 5], [0, 0, 1, 0, 0, 0, 0]]
    assert collate_packed([TokenizedPair([1], [2], [3])], PAD)["input_ids"].shape == (1, 8)


def test_packed_mask_hides_chosen_from_rejected_and_padding_from_all():
    seg = torch.tensor([[PROMPT, PROMPT, CHOSEN, CHOSEN, REJECTED, REJECTED, PADDING]])
    m = (packed_attention_mask(seg, torch.float32)[0, 0] == 0).int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # rejected sees the prompt and itself, never chosen
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],  # padding row: never attended to, and itself not fully masked
    ]
    additive = packed_attention_mask(seg, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and additive[0, 0, 4, 2] == torch.finfo(torch.bfloat16).min
    assert additive[0, 0, 4, 1] == 0


def _random_pairs(n, vocab, seed):
    rng = random.Random(seed)
    word = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    return [TokenizedPair(word(rng.randint(1, 12)), word(rng.randint(1, 15)), word(rng.randint(1, 15)))
            for _ in range(n)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_packed_logps_and_gradients_equal_concatenated(tiny_model_dir, attn, reduction):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    assert packed_forward_unsupported(model) is None
    pairs = _random_pairs(5, model.config.vocab_size, seed=3)
    results = []
    for collate, forward in ((collate_pairs, concatenated_logps), (collate_packed, packed_logps)):
        model.zero_grad()
        chosen, rejected, _ = forward(model, collate(pairs, PAD), reduction)
        (chosen.sum() - 2 * rejected.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((chosen.detach(), rejected.detach(), grads))
    assert model._minidpo_fused_head is True  # the LM head was fused into the log-probs
    (c0, r0, g0), (c1, r1, g1) = results
    assert torch.allclose(c0, c1, atol=1e-5, rtol=1e-5)
    assert torch.allclose(r0, r1, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-4)
    assert (c0 != r0).all()  # the two answers really are scored differently


def test_packed_unsupported_attention_is_named(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in packed_forward_unsupported(model)


def test_activation_checkpointing_saves_fewer_activations(tiny_model_dir):
    """Counts the elements autograd keeps for the backward: every layer checkpointed < every 2nd < none,
    and the gradients stay the same."""
    from minidpo.models import load_causal_lm

    saved, grads = {}, {}
    for every_n in (0, 1, 2):
        model = load_causal_lm(tiny_model_dir, trainable=True, activation_checkpointing=every_n)
        count = [0]

        def pack(t, count=count):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            chosen, rejected, _ = packed_logps(model, collate_packed(_random_pairs(3, 300, seed=1), PAD), "sum")
        (chosen - rejected).sum().backward()
        saved[every_n] = count[0]
        grads[every_n] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert saved[1] < saved[2] < saved[0]
    assert torch.allclose(grads[1], grads[0], atol=1e-6) and torch.allclose(grads[2], grads[0], atol=1e-6)


def _packed_run(model, pairs):
    model.zero_grad()
    chosen, rejected, _ = packed_logps(model, collate_packed(pairs, PAD), "sum")
    (chosen.sum() - 2 * rejected.sum()).backward()
    return chosen.detach(), rejected.detach(), torch.cat([p.grad.flatten().float() for p in model.parameters()])


def test_fused_head_falls_back_when_logits_are_not_plain_hidden_times_weight(tiny_model_dir):
    """A model whose logits are scaled after the head (as soft-capped or scaled models do) fails the
    first-call check and is scored from its own logits, still equal to the two-sequence forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    head_forward = model.lm_head.forward
    model.lm_head.forward = lambda x: 3.0 * head_forward(x)
    pairs = _random_pairs(3, model.config.vocab_size, seed=5)
    chosen, rejected, _ = _packed_run(model, pairs)
    assert model._minidpo_fused_head is False
    plain_chosen, plain_rejected, _ = concatenated_logps(model, collate_pairs(pairs, PAD), "sum")
    assert torch.allclose(chosen, plain_chosen.detach(), atol=1e-5)
    assert torch.allclose(rejected, plain_rejected.detach(), atol=1e-5)


def test_fused_head_in_bf16_matches_the_logits_path(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    pairs = _random_pairs(4, 300, seed=7)
    runs = []
    for fused in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        if not fused:
            model._minidpo_fused_head = False
        runs.append(_packed_run(model, pairs))
    (c0, r0, g0), (c1, r1, g1) = runs
    assert torch.allclose(c0, c1, rtol=2e-2, atol=0.1) and torch.allclose(r0, r1, rtol=2e-2, atol=0.1)
    assert torch.nn.functional.cosine_similarity(g0, g1, dim=0) > 0.999


# ---------------------------------------------------------------------------------------------------
# Split attention (minidpo/packed_attention.py): two causal sdpa calls per layer instead of a T x T mask

def test_split_attention_layout_by_hand():
    from minidpo.packed_attention import packed_layout

    P, C, R, X = PROMPT, CHOSEN, REJECTED, PADDING
    seg = torch.tensor([[P, P, C, C, C, R, R, X], [P, C, R, R, R, X, X, X]])
    layout = packed_layout(seg)
    # call 1: [prompt, chosen], right-padded by repeating the last position
    assert layout.first.tolist() == [[0, 1, 2, 3, 4], [0, 1, 1, 1, 1]]
    # call 2: [prompt, rejected], the chosen tokens skipped
    assert layout.second.tolist() == [[0, 1, 5, 6], [0, 2, 3, 4]]
    # back: prompt and chosen from call 1 (index t), rejected from call 2 after call 1's 5 outputs
    assert layout.back.tolist() == [[0, 1, 2, 3, 4, 5 + 2, 5 + 3, 0], [0, 1, 5 + 1, 5 + 2, 5 + 3, 0, 0, 0]]


def _grads_after(model, batch, forward, reduction="sum"):
    model.zero_grad()
    chosen, rejected, _ = forward(model, batch, reduction)
    (chosen.sum() - 2 * rejected.sum()).backward()
    return chosen.detach(), rejected.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_split_attention_equals_the_dense_mask_and_builds_no_mask(tiny_model_dir, monkeypatch, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from minidpo.packed_attention import NAME, stop_split_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    batch = collate_packed(_random_pairs(6, model.config.vocab_size, seed=5), PAD)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def watch(q, k, v, attn_mask=None, **kw):
        calls.append((attn_mask, kw.get("is_causal")))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", watch)
    split = _grads_after(model, batch, packed_logps)
    assert model.config._attn_implementation == NAME
    layers = model.config.num_hidden_layers
    assert len(calls) == 2 * layers and all(m is None and causal for m, causal in calls)  # no mask at all
    # saving keeps the implementation out of config.json; a two-sequence batch runs plain sdpa, unchanged
    model.save_pretrained(tmp_path / "saved")
    assert NAME not in json.dumps(json.load(open(tmp_path / "saved" / "config.json")))
    plain = collate_pairs(_random_pairs(3, model.config.vocab_size, seed=6), PAD)
    with torch.no_grad():
        on_split = concatenated_logps(model, plain, "sum")[:2]
    calls.clear()
    stop_split_attention(model)
    dense = _grads_after(model, batch, packed_logps)
    assert model.config._attn_implementation == "sdpa"
    assert len(calls) == layers and all(m is not None and m.shape[-1] == batch["input_ids"].shape[1] for m, _ in calls)
    with torch.no_grad():
        on_sdpa = concatenated_logps(model, plain, "sum")[:2]
    for a, b in zip(split, dense):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(on_split, on_sdpa))


def test_split_attention_falls_back_when_the_model_drops_the_layout(tiny_model_dir):
    """A model that does not pass its forward's keywords down to attention never sees the layout: the
    forward is redone with the dense mask, and the model stays on plain sdpa."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    pairs = _random_pairs(4, model.config.vocab_size, seed=7)
    expected = concatenated_logps(model, collate_pairs(pairs, PAD), "sum")[:2]

    def drop_layout(_module, args, kwargs):
        kwargs.pop("minidpo_layout", None)
        return args, kwargs

    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(drop_layout, with_kwargs=True)
    chosen, rejected, _ = packed_logps(model, collate_packed(pairs, PAD), "sum")
    assert model.config._attn_implementation == "sdpa" and model._minidpo_split_attention is False
    assert torch.allclose(chosen, expected[0], atol=1e-5) and torch.allclose(rejected, expected[1], atol=1e-5)
