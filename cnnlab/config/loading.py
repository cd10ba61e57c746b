"""Loading a config: the YAML file, the `--set` overrides, validation against the schema.

Example:
    cfg = load_config("configs/cnn.yaml", overrides=["train.epochs=1"])
    cfg.train.epochs  # 1
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from cnnlab.config.keypaths import apply_override, format_path
from cnnlab.config.messages import describe_error, user_path
from cnnlab.config.schema import Config
from cnnlab.config.yaml12 import YamlLoader
from cnnlab.errors import CnnlabError


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key.path=value` overrides, validate it."""
    path = Path(path)
    data, overridden = read_config(path, overrides)
    return validate_config(data, path, overridden)


def read_config(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """A config file's mapping with `overrides` applied, and the key paths they set (not validated).

    A relative `data.path` written in the file is read from the file's own folder, as most
    tools read the paths in their config files, so `cnnlab train other/dir/x.yaml` works from
    anywhere; one given with --set is read from the current directory, as any command-line path.
    Either is made absolute here: the run's config.yaml records where the data was, and a
    message names the folder that was tried.
    """
    data = read_yaml_mapping(path)
    _absolute_data_path(data, path.absolute().parent)
    overridden = [apply_override(data, override, path) for override in overrides]
    _absolute_data_path(data, Path.cwd())
    return data, overridden


def read_run_config(path: Path, recorded_source: str | None) -> dict:
    """A run's config.yaml as a mapping; a relative `data.path` (a run trained before paths were
    made absolute) becomes `recorded_source`, the folder or CSV its data.json says it read."""
    data = read_yaml_mapping(path)
    section = data.get("data")
    if recorded_source and isinstance(section, dict) and isinstance(section.get("path"), str) \
            and not Path(section["path"]).expanduser().is_absolute():
        section["path"] = recorded_source
    return data


def _absolute_data_path(data: dict, folder: Path) -> None:
    """data.path, and a backbone's weights file (model.backbone.weights), made absolute from `folder`."""
    model = data.get("model")
    backbone = model.get("backbone") if isinstance(model, dict) else None
    for section, key, keep in ((data.get("data"), "path", ()), (backbone, "weights", ("imagenet",))):
        if isinstance(section, dict) and isinstance(section.get(key), str) and section[key] not in ("", *keep):
            given = Path(section[key]).expanduser()
            if not given.is_absolute():
                section[key] = os.path.normpath(folder / given)


def read_yaml_mapping(path: Path) -> dict:
    if not path.exists():
        raise CnnlabError(f"{path}: config file not found.")
    if path.is_dir():
        raise CnnlabError(f"{path}: is a directory, expected a YAML config file.")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=YamlLoader)
    except UnicodeDecodeError:
        raise CnnlabError(f"{path}: is not a text file, expected a YAML config.") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CnnlabError(f"{path}: is not valid YAML{where}: {problem}.") from None
    if data is None:
        raise CnnlabError(f"{path}: the config is empty; it needs at least `name` and `model.layers`.")
    if not isinstance(data, dict):
        raise CnnlabError(
            f"{path}: the config must be a mapping of keys (name, data, model, train), "
            f"got a YAML {type(data).__name__}."
        )
    return data


def validate_config(data: dict, source: Path | str, overridden: list[str] = ()) -> Config:
    """Validate a config mapping; `overridden` lists the paths that came from --set."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt required key is both "unknown" and "missing": the unknown one names the typo
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        path = format_path(user_path(error["loc"], data))
        origin = " (from --set)" if any(path.startswith(p) or p.startswith(path) for p in overridden) else ""
        raise CnnlabError(f"{source}{origin}: {describe_error(error, data)}") from None
