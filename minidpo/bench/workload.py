"""The bench's fixed, generated workload: a model folder and preference pairs with known token ids.

Every trainer reads the same pairs as text, so each runs its own data pipeline; the tokenizer is a
word-level one ("w17" is token 17) with a chat template that adds nothing but an EOS after each
answer, so every pipeline must arrive at exactly the token ids generated here (checked by
`check_tokenization`). Lengths follow a log-normal spread like real preference data: median prompt
64 tokens, median answer 96, a long tail to 384, everything within max_length (`skewed_workload`:
mostly short pairs and a few ten times longer, for token-budget batches). `generate_lists`: the same spread
as lists of LIST_K answers (best first) for the listwise rows, and `list_pairs` the same lists as pairs.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field

# MiniMind2-Small sizes (the 26M model), a tiny one for tests, and a 0.5B-class one for GPUs.
MODELS = {
    "minimind-26m": dict(vocab_size=6400, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=1408, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True),
    "qwen-0.5b": dict(vocab_size=32000, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    # Qwen2.5-0.5B's shape with its full vocabulary (as a Llama: no q/k/v biases), for `make gpu-check`
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    # SmolLM2-135M's shape, for the scaling sweep
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True),
}
SPECIAL = ["<pad>", "<eos>", "<unk>"]
LIST_K = 4  # answers a list; every two of them differ in score, so a list is LIST_K (LIST_K - 1) / 2 pairs
PAIRS_PER_LIST = LIST_K * (LIST_K - 1) // 2
PAD_ID, EOS_ID = 0, 1
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }} {% endif %}{% endfor %}"
)


@dataclass
class Workload:
    model: str = "minimind-26m"
    pairs: int = 256
    prompt_median: int = 64
    response_median: int = 96
    response_max: int = 384
    max_length: int = 512
    seed: int = 0
    # a skewed spread: this fraction of the pairs has every median (and the answer cap) times long_scale
    long_fraction: float = 0.0
    long_scale: float = 1.0
    model_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown bench model {self.model!r}: choose one of {', '.join(MODELS)}")
        self.model_config = dict(MODELS[self.model])


def _lognormal(rng: random.Random, median: int, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(median * math.exp(rng.gauss(0.0, sigma)))))


def generate_pairs(w: Workload) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt_ids, chosen_ids, rejected_ids) per pair; answers end with EOS; prompt + answer <= max_length."""
    rng = random.Random(w.seed)
    vocab = w.model_config["vocab_size"]
    words = lambda n: [rng.randrange(len(SPECIAL), vocab) for _ in range(n)]  # noqa: E731
    pairs = []
    for _ in range(w.pairs):
        # the draw for a long pair only when there are any, so the plain workload's pairs stay as they were
        scale = w.long_scale if w.long_fraction and rng.random() < w.long_fraction else 1.0
        p = _lognormal(rng, round(w.prompt_median * scale), 0.45, 4, w.max_length // 2)
        room = min(round(w.response_max * scale), w.max_length - p)
        c, r = (_lognormal(rng, round(w.response_median * scale), 0.6, 2, room) for _ in range(2))
        pairs.append((words(p), words(c - 1) + [EOS_ID], words(r - 1) + [EOS_ID]))
    return pairs


def generate_lists(w: Workload) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt_ids, LIST_K answers' ids, best first) per list: w.pairs // PAIRS_PER_LIST lists (at least one),
    so they hold about as many pairs as the pairs workload; the plain length spread; answers end with EOS."""
    rng = random.Random(w.seed + 1)  # a stream of its own: the pairs stay as they are
    vocab = w.model_config["vocab_size"]
    lists = []
    for _ in range(max(1, w.pairs // PAIRS_PER_LIST)):
        p = _lognormal(rng, w.prompt_median, 0.45, 4, w.max_length // 2)
        room = min(w.response_max, w.max_length - p)
        lengths = [_lognormal(rng, w.response_median, 0.6, 2, room) for _ in range(LIST_K)]
        prompt = [rng.randrange(len(SPECIAL), vocab) for _ in range(p)]
        lists.append((prompt, [[rng.randrange(len(SPECIAL), vocab) for _ in range(n - 1)] + [EOS_ID] for n in lengths]))
    return lists


def list_pairs(w: Workload) -> list[tuple[list[int], list[int], list[int]]]:
    """The lists as pairs: (prompt_ids, better, worse) for every two answers of each list, list by list."""
    return [(prompt, answers[i], answers[j]) for prompt, answers in generate_lists(w)
            for i in range(LIST_K) for j in range(i + 1, LIST_K)]


def skewed_workload(model: str = "minimind-26m", pairs: int = 512) -> Workload:
    """Most pairs short (packed rows ~60-200 tokens), one in twenty ten times longer (~700-1800): the
    spread where a fixed pair count per micro-batch pays for its longest pair (token budgets' case)."""
    return Workload(model=model, pairs=pairs, prompt_median=24, response_median=40, response_max=96,
                    max_length=1024, long_fraction=0.05, long_scale=10.0)


def _text(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids if i != EOS_ID)


def workload_paths(out_dir: str) -> dict:
    """Where `build` puts the model folder, the pairs, the lists and the lists as pairs."""
    return {"model": os.path.join(out_dir, "model"), "data": os.path.join(out_dir, "pairs.jsonl"),
            "lists": os.path.join(out_dir, "lists.jsonl"), "list_pairs": os.path.join(out_dir, "list_pairs.jsonl")}


def build(w: Workload, out_dir: str) -> dict:
    """Write `model/` (random-init Llama + tokenizer), `pairs.jsonl`, `lists.jsonl` ({"prompt", "responses",
    "scores"}) and `list_pairs.jsonl` into out_dir; reuse them when the workload is unchanged. Returns the paths."""
    paths = workload_paths(out_dir)
    model_dir = paths["model"]
    stamp = os.path.join(out_dir, "workload.json")
    if os.path.isfile(stamp) and json.load(open(stamp)) == asdict(w) and all(map(os.path.exists, paths.values())):
        return paths
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    vocab = w.model_config["vocab_size"]
    words = {t: i for i, t in enumerate(SPECIAL)} | {f"w{i}": i for i in range(len(SPECIAL), vocab)}
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(**w.model_config, max_position_embeddings=max(2048, w.max_length), rms_norm_eps=1e-6,
                         pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None)
    torch.manual_seed(w.seed)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for name, pairs in (("data", generate_pairs(w)), ("list_pairs", list_pairs(w))):
        with open(paths[name], "w") as f:
            for prompt, chosen, rejected in pairs:
                record = {"prompt": _text(prompt), "chosen": _text(chosen), "rejected": _text(rejected)}
                f.write(json.dumps(record) + "\n")
    with open(paths["lists"], "w") as f:
        for prompt, answers in generate_lists(w):
            f.write(json.dumps({"prompt": _text(prompt), "responses": [_text(a) for a in answers],
                                "scores": list(range(LIST_K - 1, -1, -1))}) + "\n")
    with open(stamp, "w") as f:
        json.dump(asdict(w), f, indent=2)
    return paths


def _id_lists(pair) -> tuple[list[int], list[int], list[int]]:
    ids = pair if isinstance(pair, tuple) else (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)
    return tuple(list(x) for x in ids)


def check_tokenization(w: Workload, pairs) -> None:
    """Raise unless `pairs` (TokenizedPairs or tuples of prompt/chosen/rejected ids) equal the generated ids."""
    got, expected = [_id_lists(p) for p in pairs], [_id_lists(p) for p in generate_pairs(w)]
    if got != expected:
        bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise AssertionError(f"tokenized pairs differ from the generated ids (first at pair {bad}, "
                             f"{len(got)} vs {len(expected)} pairs)")


def pair_work(w: Workload) -> dict:
    """Token counts of the workload: the useful tokens (prompt counted once per answer) and lengths."""
    pairs = generate_pairs(w)
    return {"useful_tokens": sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs),
            "prompt_median": sorted(len(p) for p, _, _ in pairs)[len(pairs) // 2],
            "response_median": sorted(len(c) for _, c, _ in pairs)[len(pairs) // 2],
            "response_max": max(max(len(c), len(r)) for _, c, r in pairs)}
