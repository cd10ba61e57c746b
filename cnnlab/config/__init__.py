"""The config: one YAML file, validated once when loaded; every later stage trusts it.

- `cnnlab.config.schema`: every key, type and default (pydantic models): the single source of truth.
- `cnnlab.config.loading`: `load_config` (the file, `--set` overrides, validation), `read_yaml_mapping`.
- `cnnlab.config.keypaths`: the `--set a.b[0].c=value` key-path language.
- `cnnlab.config.messages`: pydantic's errors as one sentence naming the file and field path.
- `cnnlab.config.yaml12`: the YAML loader/dumper (unique keys, YAML 1.2 numbers).

Mistakes become a `CnnlabError` naming the file, the field path (`model.layers[2].kernel_size`)
and what would be valid.

Example:
    cfg = load_config("configs/cnn.yaml", overrides=["train.epochs=1"])
    cfg.train.epochs  # 1
"""

from cnnlab.config.keypaths import apply_override, format_path, parse_key_path, value_at
from cnnlab.config.loading import load_config, read_config, read_run_config, read_yaml_mapping, validate_config
from cnnlab.config.schema import (
    CROSSENTROPY_LOSSES,
    Config,
    CosineSchedule,
    DataSection,
    ExponentialSchedule,
    Loss,
    OneCycleSchedule,
    RunName,
    SearchRange,
    StepSchedule,
    TuneSection,
    output_units,
)
from cnnlab.errors import did_you_mean

__all__ = [
    "CROSSENTROPY_LOSSES", "Config", "CosineSchedule", "DataSection", "ExponentialSchedule", "Loss",
    "OneCycleSchedule", "RunName", "SearchRange", "StepSchedule", "TuneSection", "apply_override",
    "did_you_mean", "format_path", "load_config", "output_units", "parse_key_path", "read_config", "read_run_config", "read_yaml_mapping",
    "validate_config", "value_at",
]
