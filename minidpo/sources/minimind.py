"""MiniMind checkpoints in and out: a bare `.pth` state dict becomes a cached Hugging Face folder, and a
trained folder goes back to a `.pth` that MiniMind's own scripts load with strict loading.

    ensure_hf_folder("out/full_sft_768.pth", tokenizer="../minimind/model")  # -> ".cache/minidpo/minimind/..."
    export_minimind("runs/dpo", "out/dpo_768.pth")                            # HF folder -> MiniMind .pth

A MiniMind weights file is `{name: tensor.half()}` with no config inside; a resume file
(`*_resume.pth`) holds it under "model". The generation and every size are read from the tensors'
names and shapes (`detect`):

    minimind-3 (2026-03 on)  q/k RMSNorms over the head dim  -> Qwen3ForCausalLM
                             + `mlp.gate` / `mlp.experts.E`   -> Qwen3MoeForCausalLM (top-1, renormalised)
    minimind2 (2025-04..03)  no q/k norms, dense              -> LlamaForCausalLM (8 heads, eps 1e-5)

Not converted, with a one-line error naming what was found: minimind2's MoE (a shared expert and top-2
routing, which no transformers architecture reproduces exactly), the 2025-04-and-older layout
(`tok_embeddings`, `attention.wq`, ...), a truncated or unreadable file. The conversion is strict:
every tensor is used once, none is missing, every shape is checked against the detected sizes.

What the tensors do not show is fixed by MiniMind's code: rope theta 1e6 (rotate-half), no biases,
SiLU, eps 1e-6 (minimind-3) / 1e-5 (minimind2), minimind2's 8 attention heads, the MoE's top-1 routing
with renormalised weights and its router aux-loss coefficient 5e-4 (minidpo.moe).

transformers 5 keeps a Qwen3-MoE layer's experts fused in memory: `mlp.experts.gate_up_proj`
[E, 2I, H] (each expert's gate rows, then its up rows: the forward splits with `.chunk(2, -1)`) and
`mlp.experts.down_proj` [E, H, I]; `save_pretrained` writes them back per expert. Both directions here
go through the in-memory model, so they do not depend on the on-disk form.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen3Config, Qwen3MoeConfig

from minidpo import fsutil
from minidpo.errors import SourceError, first_line

DEFAULT_CACHE_DIR = fsutil.cache_dir("minimind")
MARKER = "minidpo_minimind.json"  # written last: a folder without it is an unfinished conversion
ROPE_THETA = 1e6
MINIMIND2_HEADS = 8  # minimind2's only head count; its tensors do not show it (no q/k norm)
MOE_TOP_K = 1
MOE_AUX_LOSS_COEF = 5e-4
SUPPORTED = ("supported: minimind-3 dense or MoE (q/k norms; HF-style names) and minimind2 dense "
             "(HF-style names, no q/k norms)")
# rotary tables some MiniMind versions register as buffers: recomputed by every model, not weights
ROPE_BUFFERS = ("freqs_cos", "freqs_sin", "pos_cis")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass
class MiniMindSpec:
    """What a MiniMind state dict is, read from its tensors."""

    generation: str  # "minimind-3" | "minimind2"
    moe: bool
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_experts: int = 0
    tie_word_embeddings: bool = True
    dtype: str = "float16"

    @property
    def architecture(self) -> str:
        if self.generation == "minimind2":
            return "LlamaForCausalLM"
        return "Qwen3MoeForCausalLM" if self.moe else "Qwen3ForCausalLM"

    def describe(self) -> str:
        kind = f"MoE {self.num_experts} experts top-{MOE_TOP_K}" if self.moe else "dense"
        return (f"{self.generation} {kind}: hidden {self.hidden_size}, {self.num_hidden_layers} layers, "
                f"{self.num_attention_heads} heads ({self.num_key_value_heads} KV, head dim {self.head_dim}), "
                f"MLP {self.intermediate_size}, vocab {self.vocab_size}")


# ------------------------------------------------------------------------------------------- reading
def load_state_dict(path: str) -> dict:
    """The tensors of a MiniMind weights or resume file, read with `weights_only=True` (no code runs)."""
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such MiniMind checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a foreign pickle, ...: one line
        raise SourceError(f"{path}: cannot read it as a PyTorch state dict (truncated or not a .pth "
                          f"file? {first_line(e)[:240]}); {SUPPORTED}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a *_resume.pth file
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{path}: expected a dict of tensors (a MiniMind weights file) or a resume file "
                          f"with one under \"model\"; found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        for prefix in ("_orig_mod.", "module."):  # torch.compile / DDP wrappers
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def _shape(sd: dict, key: str) -> tuple:
    return tuple(sd[key].shape)


def detect(sd: dict, path: str = "checkpoint") -> MiniMindSpec:
    """The generation and sizes of a MiniMind state dict, from its names and shapes."""
    names = set(sd)
    if "tok_embeddings.weight" in names or any(k.startswith("layers.") for k in names):
        found = ", ".join(sorted(k for k in names if k.startswith(("tok_embeddings", "layers.0.")))[:4])
        raise SourceError(f"{path}: the 2025-04-or-older MiniMind layout ({found}, ...) is not supported; "
                          f"{SUPPORTED}. Load it in that MiniMind version and save it from a current one")
    if "model.embed_tokens.weight" not in names:
        raise SourceError(f"{path}: no model.embed_tokens.weight: not a MiniMind checkpoint "
                          f"(first keys: {', '.join(sorted(names)[:4])}); {SUPPORTED}")
    vocab, hidden = _shape(sd, "model.embed_tokens.weight")
    layers = sorted({int(m[1]) for k in names if (m := LAYER_KEY.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise SourceError(f"{path}: decoder layers {layers[:8]} are not numbered 0..n-1; {SUPPORTED}")
    p = "model.layers.0."
    qk_norm = f"{p}self_attn.q_norm.weight" in names
    moe = f"{p}mlp.gate.weight" in names
    if any(".shared_expert" in k for k in names) or (moe and not qk_norm):
        raise SourceError(f"{path}: a minimind2 mixture-of-experts checkpoint (shared expert, top-2 routing) "
                          f"cannot be converted exactly: no transformers architecture matches it; {SUPPORTED}")
    for key in (f"{p}self_attn.q_proj.weight", f"{p}self_attn.k_proj.weight"):
        if key not in names:
            raise SourceError(f"{path}: {key} is missing; {SUPPORTED}")
    q_out, k_out = _shape(sd, f"{p}self_attn.q_proj.weight")[0], _shape(sd, f"{p}self_attn.k_proj.weight")[0]
    if qk_norm:
        head_dim = _shape(sd, f"{p}self_attn.q_norm.weight")[0]
        generation = "minimind-3"
    else:
        head_dim = hidden // MINIMIND2_HEADS
        generation = "minimind2"
    if q_out % head_dim or k_out % head_dim or (q_out // head_dim) % (k_out // head_dim):
        raise SourceError(f"{path}: q_proj {q_out} / k_proj {k_out} outputs do not split into heads of "
                          f"{head_dim}; {SUPPORTED}")
    experts = 0
    if moe:
        experts = _shape(sd, f"{p}mlp.gate.weight")[0]
        intermediate = _shape(sd, f"{p}mlp.experts.0.gate_proj.weight")[0] if f"{p}mlp.experts.0.gate_proj.weight" in names else 0
    else:
        key = f"{p}mlp.gate_proj.weight"
        if key not in names:
            raise SourceError(f"{path}: {key} is missing; {SUPPORTED}")
        intermediate = _shape(sd, key)[0]
    tied = "lm_head.weight" not in names or (
        _shape(sd, "lm_head.weight") == (vocab, hidden) and bool((sd["lm_head.weight"] == sd["model.embed_tokens.weight"]).all()))
    dtype = str(sd["model.embed_tokens.weight"].dtype).replace("torch.", "")
    return MiniMindSpec(generation, moe, vocab, hidden, len(layers), q_out // head_dim, k_out // head_dim, head_dim,
                        intermediate, experts, tied, dtype)


def expected_shapes(spec: MiniMindSpec) -> dict:
    """Every tensor a MiniMind state dict of this spec has, with its shape (MiniMind's key names)."""
    H, I, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, H), "model.norm.weight": (H,),
              "lm_head.weight": (spec.vocab_size, H)}
    for n in range(spec.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.update({
            f"{p}self_attn.q_proj.weight": (spec.num_attention_heads * hd, H),
            f"{p}self_attn.k_proj.weight": (spec.num_key_value_heads * hd, H),
            f"{p}self_attn.v_proj.weight": (spec.num_key_value_heads * hd, H),
            f"{p}self_attn.o_proj.weight": (H, spec.num_attention_heads * hd),
            f"{p}input_layernorm.weight": (H,), f"{p}post_attention_layernorm.weight": (H,),
        })
        if spec.generation == "minimind-3":
            shapes[f"{p}self_attn.q_norm.weight"] = (hd,)
            shapes[f"{p}self_attn.k_norm.weight"] = (hd,)
        mlps = [f"{p}mlp.experts.{e}." for e in range(spec.num_experts)] if spec.moe else [f"{p}mlp."]
        if spec.moe:
            shapes[f"{p}mlp.gate.weight"] = (spec.num_experts, H)
        for m in mlps:
            shapes.update({f"{m}gate_proj.weight": (I, H), f"{m}up_proj.weight": (I, H), f"{m}down_proj.weight": (H, I)})
    return shapes


def check_strict(sd: dict, spec: MiniMindSpec, path: str) -> None:
    """Every tensor used, none missing, every shape as the spec says."""
    want = expected_shapes(spec)
    have = {k for k in sd if k.split(".")[-1] not in ROPE_BUFFERS}
    optional = {"lm_head.weight"}  # a tied head may be saved or not
    missing = sorted(set(want) - have - optional)
    unexpected = sorted(have - set(want))
    if missing or unexpected:
        parts = ([f"missing {len(missing)} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"] if missing else []) + \
                ([f"unexpected {len(unexpected)} ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"] if unexpected else [])
        raise SourceError(f"{path}: the tensors do not form a {spec.describe()}: {'; '.join(parts)} "
                          "(a truncated or hand-edited checkpoint?)")
    for key, shape in want.items():
        if key in sd and tuple(sd[key].shape) != shape:
            raise SourceError(f"{path}: {key} has shape {list(sd[key].shape)}, expected {list(shape)} "
                              f"for a {spec.describe()}")


# ---------------------------------------------------------------------------------------- converting
def hf_config(spec: MiniMindSpec, tokenizer=None):
    """The transformers config that computes what MiniMind's forward computes for this spec."""
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    common = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                  num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, hidden_act="silu",
                  max_position_embeddings=32768, tie_word_embeddings=spec.tie_word_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, attention_bias=False, **ids)
    if spec.generation == "minimind2":
        return LlamaConfig(**common, rms_norm_eps=1e-5, mlp_bias=False)
    if spec.moe:
        return Qwen3MoeConfig(**common, rms_norm_eps=1e-6, num_experts=spec.num_experts, num_experts_per_tok=MOE_TOP_K,
                              moe_intermediate_size=spec.intermediate_size, norm_topk_prob=True, decoder_sparse_step=1,
                              mlp_only_layers=[], router_aux_loss_coef=MOE_AUX_LOSS_COEF, output_router_logits=False,
                              router_aux_loss_sum_over_layers=True)  # MiniMind's weighting: minidpo.moe
    return Qwen3Config(**common, rms_norm_eps=1e-6)


def to_hf_state_dict(sd: dict, spec: MiniMindSpec) -> dict:
    """MiniMind's tensors under the in-memory names of the transformers model (experts fused)."""
    out = {k: v for k, v in sd.items() if k.split(".")[-1] not in ROPE_BUFFERS and ".mlp.experts." not in k}
    if spec.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    for n in range(spec.num_hidden_layers if spec.moe else 0):
        p = f"model.layers.{n}.mlp.experts"
        E = range(spec.num_experts)
        out[f"{p}.gate_up_proj"] = torch.stack([torch.cat([sd[f"{p}.{e}.gate_proj.weight"], sd[f"{p}.{e}.up_proj.weight"]]) for e in E])
        out[f"{p}.down_proj"] = torch.stack([sd[f"{p}.{e}.down_proj.weight"] for e in E])
    return out


def build_hf_model(sd: dict, spec: MiniMindSpec, tokenizer=None):
    """The transformers model (fp32) holding exactly the checkpoint's weights."""
    config = hf_config(spec, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float() for k, v in to_hf_state_dict(sd, spec).items()}
    if spec.tie_word_embeddings:
        model.tie_weights()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (spec.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:  # a bug here, not in the user's file: check_strict passed
        raise RuntimeError(f"internal: {type(model).__name__} missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def cache_key(path: str, tokenizer: str) -> str:
    """Content hash of the checkpoint and the tokenizer folder's files (a changed tokenizer reconverts)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    for name in sorted(os.listdir(tokenizer)):
        full = os.path.join(tokenizer, name)
        if os.path.isfile(full):
            h.update(name.encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def _load_tokenizer(tokenizer: str, path: str, spec: MiniMindSpec):
    if not os.path.isdir(tokenizer):
        raise SourceError(f"--tokenizer {tokenizer}: not a folder (give MiniMind's tokenizer folder, e.g. "
                          "../minimind/model)")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SourceError(f"--tokenizer {tokenizer}: cannot load a tokenizer from it: {e}") from None
    if len(tok) > spec.vocab_size:
        raise SourceError(f"--tokenizer {tokenizer}: {len(tok)} tokens but {path} has a vocabulary of "
                          f"{spec.vocab_size}: not this checkpoint's tokenizer")
    return tok


def ensure_hf_folder(path: str, tokenizer: str | None, cache_dir: str = DEFAULT_CACHE_DIR, *, log=None) -> str:
    """A cached Hugging Face folder (safetensors + config + the tokenizer) for a MiniMind `.pth` file,
    converted on the first call; later calls with the same file and tokenizer return it at once."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = str(path)
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such MiniMind checkpoint file")
    if not tokenizer:
        raise SourceError(f"{path}: a MiniMind .pth holds no tokenizer: pass --tokenizer with MiniMind's "
                          "tokenizer folder (e.g. --tokenizer ../minimind/model; make ... TOKENIZER=...)")
    if not os.path.isdir(tokenizer):
        raise SourceError(f"--tokenizer {tokenizer}: not a folder (give MiniMind's tokenizer folder, e.g. "
                          "../minimind/model)")
    stem = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.join(cache_dir, f"{stem}-{cache_key(path, tokenizer)}")
    if os.path.isfile(os.path.join(folder, MARKER)):
        return folder
    sd = load_state_dict(path)
    spec = detect(sd, path)
    check_strict(sd, spec, path)
    tok = _load_tokenizer(tokenizer, path, spec)
    log(f"minidpo.sources.minimind: {path}: {spec.describe()} -> {spec.architecture} in {folder} (once; cached)")
    model = build_hf_model(sd, spec, tok)

    def write(tmp: str) -> None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.to(getattr(torch, spec.dtype)).save_pretrained(tmp)  # in the checkpoint's own precision
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"source": os.path.realpath(path), "tokenizer": os.path.realpath(tokenizer),
                       "architecture": spec.architecture, **asdict(spec)}, f, indent=2)

    return fsutil.cached_build(folder, write, marker=MARKER)


# ----------------------------------------------------------------------------------------- exporting
def export_source(path: str) -> str:
    """The Hugging Face folder of a run folder (its export/) or the folder itself."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if os.path.isfile(os.path.join(path, "export", "config.json")):
        return os.path.join(path, "export")
    raise SourceError(f"{path}: neither a Hugging Face model folder nor a run folder with export/config.json")


def minimind_state_dict(model) -> dict:
    """A transformers Qwen3 / Qwen3-MoE / Llama model's weights in MiniMind's key layout, fp16, experts
    unfused, the tied head saved under lm_head.weight as MiniMind's own state_dict() has it."""
    kind = model.config.model_type
    if kind not in ("qwen3", "qwen3_moe", "llama"):
        raise SourceError(f"a {type(model).__name__} ({kind}) has no MiniMind layout: MiniMind is Qwen3 "
                          "(minimind-3), Qwen3-MoE (its MoE) or Llama (minimind2)")
    if kind == "qwen3_moe" and model.config.num_experts_per_tok != MOE_TOP_K:
        raise SourceError(f"this Qwen3-MoE routes to {model.config.num_experts_per_tok} experts per token; "
                          f"MiniMind's MoE routes to {MOE_TOP_K}")
    if kind == "llama" and model.config.num_attention_heads != MINIMIND2_HEADS:
        raise SourceError(f"this Llama has {model.config.num_attention_heads} attention heads; minimind2 has "
                          f"{MINIMIND2_HEADS}")
    theta = (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is not None and float(theta) != ROPE_THETA:
        raise SourceError(f"rope theta {theta:g}: MiniMind's rotary embeddings use {ROPE_THETA:g}")
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$", key)
        if not m:
            out[key] = value
            continue
        for e in range(value.shape[0]):
            if m[2] == "down_proj":
                out[f"{m[1]}.{e}.down_proj.weight"] = value[e]
            else:
                gate, up = value[e].chunk(2, dim=0)
                out[f"{m[1]}.{e}.gate_proj.weight"], out[f"{m[1]}.{e}.up_proj.weight"] = gate, up
    out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
    out = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in out.items()}
    spec = detect(out, type(model).__name__)
    check_strict(out, spec, type(model).__name__)  # e.g. biases or a non-MiniMind head count would show here
    return out


def export_minimind(source: str, out_path: str) -> MiniMindSpec:
    """Write the fp16 MiniMind state dict of a run folder or Hugging Face folder to `out_path`."""
    folder = export_source(source)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    sd = minimind_state_dict(model)
    spec = detect(sd, folder)
    with fsutil.atomic_file(out_path) as tmp:
        torch.save(sd, tmp)
    return spec


def minimind_config_args(spec: MiniMindSpec) -> str:
    """How MiniMind's own scripts must be told the sizes (they build MiniMindConfig from flags)."""
    return f"--hidden_size {spec.hidden_size} --num_hidden_layers {spec.num_hidden_layers} --use_moe {int(spec.moe)}"
