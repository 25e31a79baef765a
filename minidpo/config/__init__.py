"""Run configuration: plain values in sections, settable from a JSON/YAML file and from flags (flags win).

Each section is a dataclass of the settings of one concern; a run config is the sections it needs:
`RunConfig` (DPO) has all of them, `SFTConfig` none of DPO's loss, reference or LoRA settings. The flag
and YAML names are the fields' names, flat (`--beta`, `lora_r: 16`), and `--help` lists them by section.
List-valued settings given as text ("sigmoid,sft", "1.0,0.5", "q_proj,v_proj") are parsed once, here.

Each field says what a resumed run may change (metadata "resume"): "same" (the checkpoint's value must
match), "content" (a path whose bytes must match) or "free". Sections set the default; the resume
fingerprint is derived from it (minidpo.checkpoint), so a new setting cannot be forgotten there.

    sections.py  the sections, RunConfig (DPO) and SFTConfig, the choice lists
    flags.py     build_arg_parser, parse_config, load_config_file
    checks.py    validate (cheap checks of every section), check_token_budget, check_output_dir
"""

from minidpo.config.checks import check_output_dir, check_token_budget, validate
from minidpo.config.flags import build_arg_parser, load_config_file, parse_config
from minidpo.config.health import TRACKERS, HealthSettings, report_to_names
from minidpo.config.sections import (
    BAD_RECORD_POLICIES,
    CHAT_TEMPLATES,
    DTYPES,
    FREE_SECTIONS,
    LOGPS_REDUCTIONS,
    BatchSettings,
    CheckpointSettings,
    DataSettings,
    DistributedSettings,
    LoraSettings,
    LossSettings,
    ModelSettings,
    ReferenceSettings,
    RunConfig,
    ScheduleSettings,
    SFTConfig,
)

__all__ = ["BAD_RECORD_POLICIES", "CHAT_TEMPLATES", "DTYPES", "FREE_SECTIONS", "LOGPS_REDUCTIONS", "TRACKERS",
           "BatchSettings", "CheckpointSettings", "DataSettings", "DistributedSettings", "HealthSettings", "LoraSettings",
           "LossSettings", "ModelSettings", "ReferenceSettings", "RunConfig", "SFTConfig", "ScheduleSettings",
           "build_arg_parser", "check_output_dir", "check_token_budget", "load_config_file", "parse_config",
           "report_to_names", "validate"]
