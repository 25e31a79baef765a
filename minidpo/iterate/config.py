"""Settings of `minidpo.iterate`: plain values, from a JSON/YAML file and flags (flags win), parsed by
the trainer's own `minidpo.config.parse_config`. Each round's DPO settings stay in the trainer's run
config (`train_config` + `train_args`), so a round is trained exactly as `make train` trains."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from minidpo.errors import ConfigError

REFERENCES = ("sft", "previous")
BUILTIN_JUDGES = ("rule", "reward_model", "votes", "verify")
LAUNCHERS = ("deepspeed", "python")


@dataclass
class IterateConfig:
    # the models and the data
    model: str = field(default="runs/dpo/export", metadata={"help": "policy of round 1 (the `make train` export)"})
    sft_model: str = field(default="runs/sft/export", metadata={"help": "the SFT model: KL baseline, and the reference when reference=sft"})
    data: str = field(default="data/demo/train.jsonl", metadata={"help": "prompts to sample for (and, with judge=votes, the original pairs); judge=verify: IFEval's input format"})
    heldout: str = field(default="data/demo/heldout.jsonl", metadata={"help": "held-out data evaluated after each round ('' skips evaluation); judge=verify: IFEval's input format"})
    output_dir: str = field(default="runs/iterate", metadata={"help": "iteration folder: round_1/, round_2/, ..., summary.md/json"})
    # the loop
    rounds: int = field(default=3, metadata={"help": "rounds of sample -> judge -> pairs -> DPO"})
    samples_per_prompt: int = field(default=4, metadata={"help": "answers sampled per prompt (>= 2): the pair is the best vs the worst"})
    listwise: bool = field(default=False, metadata={"help": "scoring judges: keep all of a prompt's answers with their scores as one listwise record, trained with loss_type listwise_pairs (or plackett_luce), instead of best vs worst"})
    axes: str = field(default="", metadata={"help": "sample prompts of these axes of --data only, comma-separated (e.g. 'refusal,structure,fact'); '' = every axis"})
    prompts_per_round: int = field(default=128, metadata={"help": "prompts per round, stratified over axis x language, new draw each round (-1: all)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the round's answers (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "top-p of the round's answers"})
    max_new_tokens: int = field(default=160, metadata={"help": "token limit of a sampled answer"})
    sample_batch_size: int = field(default=128, metadata={"help": "prompts decoded together (KV cache)"})
    reference: str = field(default="previous", metadata={"help": "reference of round k: sft (the SFT model) | previous (round k-1's policy)"})
    min_pairs: int = field(default=16, metadata={"help": "a round with fewer pairs stops the loop (nothing to learn)"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt draw and of the sampling"})
    # the judge
    judge: str = field(default="rule", metadata={"help": "rule (the demo's) | reward_model | votes | verify (IFEval's verifiers) | package.module:factory (factory(cfg) -> judge)"})
    reward_model: str = field(default="", metadata={"help": "judge=reward_model: a local Hugging Face sequence-classification folder"})
    reward_batch_size: int = field(default=32, metadata={"help": "answers per reward-model forward"})
    votes: str = field(default="runs/votes.jsonl", metadata={"help": "judge=votes: the app's blind votes"})
    votes_unpaired: str = field(default="", metadata={"help": "judge=votes: the app's unpaired votes (thumbs, both bad), trained with kto added to the loss; '' = the votes file's name + _unpaired, used when it exists"})
    votes_fraction: float = field(default=0.5, metadata={"help": "judge=votes: share of votes (pairs and unpaired examples) in a round's records, the rest pairs drawn from --data"})
    verify_margin: float = field(default=0.5, metadata={"help": "judge=verify: a pair needs best and worst scores (share of instructions followed) at least this far apart"})
    prefill: str = field(default="", metadata={"help": "scoring judges: where a prompt's samples all score the same (no pair), one more answer is sampled that starts with this text and goes on in the policy's own words, judged like the others (e.g. \"I'm sorry, but I can't help with that.\": a chosen refusal that is not a template, and on harmless prompts a rejected one)"})
    refusal_worst: bool = field(default=False, metadata={"help": "judge=rule: on a harmless prompt a refusal scores 0.0 and any other miss 0.5, so a refusal is always the rejected answer (with --prefill: a prefilled refusal of a tied harmless prompt always makes a pair)"})
    verify_edit: bool = field(default=True, metadata={"help": "judge=verify: where no sample follows every instruction, the chosen answer is the best one edited until the verifier passes it (lowercased, commas removed, ...)"})
    # each round's DPO run
    train_config: str = field(default="configs/demo_iterate_dpo.yaml", metadata={"help": "run config of each round's DPO ('' for the trainer's defaults)"})
    train_args: str = field(default="", metadata={"help": "extra trainer flags for every round, e.g. '--epochs 3 --learning_rate 1e-5'"})
    deepspeed: str = field(default="ds_configs/zero2.json", metadata={"help": "DeepSpeed JSON of each round's DPO"})
    nproc: int = field(default=1, metadata={"help": "ranks for training (and sampling processes)"})
    launcher: str = field(default="deepspeed", metadata={"help": "deepspeed (as `make train`) | python (one rank, no launcher)"})
    # evaluation after each round (`make eval`'s)
    eval_n_generate: int = field(default=160, metadata={"help": "held-out answers judged per evaluation (0: skip)"})
    eval_n_kl: int = field(default=64, metadata={"help": "held-out prompts for KL from the SFT model (0: skip)"})
    eval_start: bool = field(default=True, metadata={"help": "also evaluate the starting policy (round 0 of the table)"})
    eval_max_new_tokens: int = field(default=160, metadata={"help": "token limit of the evaluation's answers"})
    eval_limit: int = field(default=100, metadata={"help": "judge=verify: the first N prompts of --heldout answered (greedy) per evaluation (-1: all)"})

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def votes_beside(self, kind: str) -> str:
        """The app's file of `kind` ("unpaired", "battles") next to the votes file: its name + _kind
        (app/votes.py's `beside`, recomputed here: minidpo does not import the app)."""
        if kind == "unpaired" and self.votes_unpaired:
            return self.votes_unpaired
        p = Path(self.votes)
        return str(p.with_name(f"{p.stem}_{kind}{p.suffix or '.jsonl'}"))


def _model_folder(path: str, flag: str) -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        hint = " (run `make train` first)" if path in (IterateConfig.model, IterateConfig.sft_model) else ""
        raise ConfigError(f"--{flag} {path}: not a Hugging Face model folder{hint}")


def validate(cfg: IterateConfig) -> None:
    """Cheap checks before any model is loaded; every message names the setting."""
    _model_folder(cfg.model, "model")
    _model_folder(cfg.sft_model, "sft_model")
    if not os.path.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such file or folder")
    if cfg.heldout and not os.path.exists(cfg.heldout):
        raise ConfigError(f"--heldout {cfg.heldout}: no such file or folder ('' skips evaluation)")
    for name, low in (("rounds", 1), ("samples_per_prompt", 2), ("min_pairs", 1), ("max_new_tokens", 1),
                      ("sample_batch_size", 1), ("reward_batch_size", 1), ("nproc", 1)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"--{name} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.prompts_per_round == 0 or cfg.prompts_per_round < -1:
        raise ConfigError(f"--prompts_per_round must be >= 1 or -1 (all), got {cfg.prompts_per_round}")
    if not cfg.temperature > 0:
        raise ConfigError(f"--temperature must be > 0 (greedy answers to one prompt are all the same), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.reference not in REFERENCES:
        raise ConfigError(f"--reference {cfg.reference}: choose one of {', '.join(REFERENCES)}")
    if cfg.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {cfg.launcher}: choose one of {', '.join(LAUNCHERS)}")
    if cfg.launcher == "python" and cfg.nproc > 1:
        raise ConfigError("--launcher python runs one rank; use --launcher deepspeed for --nproc > 1")
    if cfg.judge not in BUILTIN_JUDGES and ":" not in cfg.judge:
        raise ConfigError(f"--judge {cfg.judge}: choose one of {', '.join(BUILTIN_JUDGES)} or package.module:factory")
    if cfg.judge == "reward_model":
        if not cfg.reward_model:
            raise ConfigError("--judge reward_model needs --reward_model FOLDER (a sequence-classification model)")
        _model_folder(cfg.reward_model, "reward_model")
    if cfg.prefill and (cfg.judge in ("votes", "verify") or cfg.listwise):
        raise ConfigError("--prefill applies to scoring judges pairing best vs worst (rule, reward_model, your own); "
                          f"not to --judge {cfg.judge}" + (" with --listwise true" if cfg.listwise else ""))
    if cfg.refusal_worst and cfg.judge != "rule":
        raise ConfigError(f"--refusal_worst applies to --judge rule (the demo's axes), not to --judge {cfg.judge}")
    if cfg.judge == "votes":
        if cfg.votes_unpaired and not os.path.isfile(cfg.votes_unpaired):
            raise ConfigError(f"--votes_unpaired {cfg.votes_unpaired}: no such file ('' reads the one beside --votes when it exists)")
        if not os.path.isfile(cfg.votes) and not os.path.isfile(cfg.votes_beside("unpaired")):
            raise ConfigError(f"--votes {cfg.votes}: no such file, nor {cfg.votes_beside('unpaired')} (vote in the "
                              "app's blind mode first: `make app`)")
        if cfg.listwise:
            raise ConfigError("--listwise true needs a judge that scores answers (rule, reward_model, verify, your "
                              "own); votes are pairs and unpaired examples")
        if not 0 < cfg.votes_fraction <= 1:
            raise ConfigError(f"--votes_fraction must be in (0, 1], got {cfg.votes_fraction}")
    if cfg.judge == "verify":
        if not 0 < cfg.verify_margin <= 1:
            raise ConfigError(f"--verify_margin must be in (0, 1] (a difference of shares of instructions followed), got {cfg.verify_margin}")
        if cfg.eval_limit == 0 or cfg.eval_limit < -1:
            raise ConfigError(f"--eval_limit must be >= 1 or -1 (all), got {cfg.eval_limit}")
    if cfg.train_config and not os.path.isfile(cfg.train_config):
        raise ConfigError(f"--train_config {cfg.train_config}: no such file")
    if not os.path.isfile(cfg.deepspeed):
        raise ConfigError(f"--deepspeed {cfg.deepspeed}: no such file (see ds_configs/)")
