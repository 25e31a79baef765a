"""minidpo.generation: batched, left-padded, seeded sampling that stops at EOS."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minidpo.data import encode_prompt_response
from minidpo.generation import generate, generate_ids, prompt_ids_for

PROMPTS = [[{"role": "user", "content": c}] for c in
           ("What is 12 + 7?", "光合作用是什么？", "I can't help with that request, but tell me about the quick brown fox.")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_sampling_is_deterministic_for_a_seed(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.1, batch_size=2)
    torch.manual_seed(123)  # the global RNG must not matter
    a = generate(model, tok, PROMPTS, seed=7, **kw)
    torch.manual_seed(456)
    b = generate(model, tok, PROMPTS, seed=7, **kw)
    c = generate(model, tok, PROMPTS, seed=8, **kw)
    assert a == b and a != c
    assert len(a) == 3 and all(isinstance(x, str) for x in a)


def test_greedy_matches_unbatched_and_uncached_decoding(tiny):
    model, tok = tiny
    batched = generate_ids(model, tok, [prompt_ids_for(tok, p) for p in PROMPTS], max_new_tokens=10,
                           temperature=0, batch_size=3)
    for p, got in zip(PROMPTS, batched):
        ids = prompt_ids_for(tok, p)
        assert generate_ids(model, tok, [ids], max_new_tokens=10, temperature=0, batch_size=1)[0] == got
        x = torch.tensor([ids])  # plain argmax loop, no cache, no padding
        for _ in range(len(got)):
            x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert x[0, len(ids):].tolist() == got


def test_prompts_are_tokenized_like_training(tiny):
    _, tok = tiny
    assert prompt_ids_for(tok, PROMPTS[0]) == list(encode_prompt_response(tok, PROMPTS[0], "x")[0])


class _Scripted(torch.nn.Module):
    """A fake causal LM that answers row i with script[i] (then anything), whatever the prompt."""

    def __init__(self, scripts, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.scripts, self.config, self.start = scripts, SimpleNamespace(vocab_size=vocab), None

    def forward(self, input_ids, attention_mask, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        if cache is None:
            self.start = attention_mask.shape[1]
        step = attention_mask.shape[1] - self.start
        logits = torch.zeros(input_ids.shape[0], 1, self.config.vocab_size)
        for i, s in enumerate(self.scripts):
            logits[i, 0, s[min(step, len(s) - 1)]] = 10.0
        return SimpleNamespace(logits=logits, cache="kv")


def test_stops_at_eos_per_row(tiny):
    _, tok = tiny
    eos, a, b = tok.eos_token_id, tok.encode("The")[0], tok.encode("x")[0]
    assert None not in (a, b) and len({a, b, eos}) == 3
    model = _Scripted([[a, eos, b], [a, b, b, eos, a]], len(tok))
    ids = generate_ids(model, tok, [[5, 6, 7], [8]], max_new_tokens=10, temperature=0)
    assert ids == [[a, eos], [a, b, b, eos]]
    model = _Scripted([[a, eos, b], [a, b, b, eos, a]], len(tok))
    texts = generate(model, tok, PROMPTS[:2], max_new_tokens=10, temperature=0)
    assert texts == [tok.decode([a]), tok.decode([a, b, b])]
    model = _Scripted([[a, b, a, b, a, b]], len(tok))  # never stops: cut at max_new_tokens
    assert generate_ids(model, tok, [[5]], max_new_tokens=4, temperature=0) == [[a, b, a, b]]


def test_bad_settings_are_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, PROMPTS[:1], temperature=-1.0)
