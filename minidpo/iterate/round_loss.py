"""The loss of a round whose data is not plain pairs: trainer flags added after `train_args`.

    lists (listwise: true)        loss_type listwise_pairs (from sigmoid: DPO's loss on every pair of a
                                  list), or the train config's listwise_pairs / plackett_luce; any other
                                  loss is pairwise only and refused
    pairs + unpaired (votes)      loss_type <the train config's>,kto: pairs get the pairwise loss, the
                                  unpaired votes KTO's (a train config that names kto already is kept)

Both drop what their rows cannot take: an unpaired round precompute_ref (KTO's mismatched pairs are
scored per batch); a listwise round rpo_alpha (the listwise losses take no NLL term). The result is checked with the trainer's own checks (minidpo.config.validate) before the round
starts, so a setting it refuses is one line here, not a failed round.

    flags = round_loss_flags(cfg, "lists" | "unpaired", model=policy, data=some_data_file)
"""

from __future__ import annotations

import shlex

from minidpo.config import build_arg_parser, validate
from minidpo.config.flags import config_from_flags
from minidpo.config.sections import RunConfig
from minidpo.errors import ConfigError
from minidpo.losses import LISTWISE_LOSSES, loss_names

KTO = "kto"
KINDS = ("lists", "unpaired")


def round_run_config(cfg, extra: list[str] = ()) -> RunConfig:
    """The trainer's run config of a round, as it parses it: train_config < train_args < extra."""
    args, _ = build_arg_parser(RunConfig).parse_known_args([*shlex.split(cfg.train_args), *extra])
    return config_from_flags({**vars(args), "config": cfg.train_config or None}, RunConfig)


def listwise_flags(run: RunConfig) -> list[str]:
    names = loss_names(run.loss_type)
    if len(names) == 1 and names[0] in LISTWISE_LOSSES:
        flags = []
    elif names == ["sigmoid"]:
        flags = ["--loss_type", "listwise_pairs"]
    else:
        raise ConfigError(f"--listwise true: the rounds' loss_type {','.join(names)} (train_config / train_args) "
                          "is pairwise only; a listwise round trains listwise_pairs (set sigmoid or listwise_pairs) "
                          "or plackett_luce")
    return flags + (["--rpo_alpha", "0"] if run.rpo_alpha else [])


def unpaired_flags(run: RunConfig) -> list[str]:
    names = loss_names(run.loss_type)
    if set(names) & set(LISTWISE_LOSSES):
        raise ConfigError(f"--judge votes: the rounds' loss_type {','.join(names)} (train_config / train_args) "
                          "trains lists; votes are pairs and unpaired examples: set a pairwise loss_type (the round "
                          "adds kto for the unpaired votes, e.g. sigmoid,kto)")
    if names == [KTO]:
        raise ConfigError("--judge votes: the rounds' loss_type kto (train_config / train_args) trains unpaired "
                          "examples only, and a votes round has pairs too: set a pairwise loss_type (the round "
                          "adds kto for the unpaired votes, e.g. sigmoid,kto)")
    flags = []
    if KTO not in names:
        flags = ["--loss_type", ",".join([*names, KTO])]
        if run.loss_weights:  # one weight per term: kto's is 1
            flags += ["--loss_weights", ",".join(f"{w:g}" for w in [*run.loss_weights, 1.0])]
    return flags + (["--precompute_ref", "false"] if run.precompute_ref else [])


def round_loss_flags(cfg, kind: str, *, model: str, data: str) -> list[str]:
    """The flags a round of `kind` adds, checked as the trainer checks its settings; a ConfigError
    (one line) when the rounds' loss cannot train that kind of data."""
    if kind not in KINDS:
        raise ValueError(f"unknown round data kind {kind!r}: one of {', '.join(KINDS)}")
    flags = (listwise_flags if kind == "lists" else unpaired_flags)(round_run_config(cfg))
    run = round_run_config(cfg, [*flags, "--model", model, "--data", data, "--deepspeed", cfg.deepspeed,
                                 "--output_dir", cfg.output_dir])
    try:
        validate(run)
    except ConfigError as e:
        what = "listwise rounds" if kind == "lists" else "votes rounds with unpaired votes"
        raise ConfigError(f"{what} train with {' '.join(flags) or 'the train config as it is'}, which the trainer "
                          f"refuses: {e}") from None
    return flags
