"""Settings from flags and JSON/YAML files: defaults < --config file < command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from minidpo.config.sections import RunConfig
from minidpo.errors import ConfigError

def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f: dataclasses.Field):
    """The scalar parser for a dataclass field (annotations are strings under `from __future__`)."""
    t = str(f.type)
    if t.startswith("bool"):
        return _parse_bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def build_arg_parser(config_cls=RunConfig, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON or YAML run-config file; flags given on the command line override it")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # added by `deepspeed`
    sections = config_cls.sections() if hasattr(config_cls, "sections") else [config_cls]
    seen = set()
    for section in sections:
        group = parser.add_argument_group(section.__doc__.strip().splitlines()[0].rstrip(".")) \
            if section is not config_cls else parser
        for f in dataclasses.fields(config_cls):
            if f.name in seen or f.name not in section.__dataclass_fields__:
                continue
            seen.add(f.name)
            kwargs = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", " ")}
            if str(f.type).startswith("tuple"):
                kwargs.update(nargs=2, type=float, metavar=("B1", "B2"))
            else:
                kwargs["type"] = _field_type(f)
            group.add_argument(f"--{f.name}", **kwargs)
    return parser


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml  # only a YAML config needs it

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise ConfigError(f"--config {path}: cannot parse: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting -> value")
    return values


def parse_config(argv: list[str] | None = None, config_cls=RunConfig, description: str = ""):
    """Defaults < --config file < command-line flags. Unknown keys in the file are errors."""
    return config_from_flags(vars(build_arg_parser(config_cls, description).parse_args(argv)), config_cls)


def config_from_flags(args: dict, config_cls=RunConfig):
    """The run config of parsed flags (build_arg_parser's, or a parser that took its arguments as a
    parent): defaults < --config file < the flags given. Keys that are not settings are ignored."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    args = {k: v for k, v in args.items() if k in known or k == "config"}
    values = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    unknown = sorted(set(values) - known)
    if unknown:
        what = "DPO-only " if config_cls is not RunConfig and set(unknown) <= {f.name for f in dataclasses.fields(RunConfig)} else ""
        raise ConfigError(f"unknown {what}setting(s) in config file: {', '.join(unknown)}")
    values.update(args)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
    return config_cls(**values)


