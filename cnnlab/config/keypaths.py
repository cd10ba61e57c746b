"""The `--set` key-path language: `train.epochs=3`, `model.layers[0].filters=64`.

Example:
    data = {"train": {"epochs": 5}}
    apply_override(data, "train.epochs=3", Path("c.yaml"))   # "train.epochs"; data["train"]["epochs"] == 3
    value_at(data, "train.epochs", "c.yaml")                 # 3
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config.yaml12 import YamlLoader
from cnnlab.errors import CnnlabError, did_you_mean

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
KEY_PATH = re.compile(r"\w+(\[\d+\])*(\.\w+(\[\d+\])*)*")  # train.epochs, model.layers[0].filters


def apply_override(data: dict, override: str, source: Path) -> str:
    """Apply one `--set a.b[0].c=value` override (the value is parsed as YAML); returns its path."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise CnnlabError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.epochs=3.")
    where = f"--set {override!r}"
    parts = parse_key_path(key.strip(), where)
    try:
        value = yaml.load(raw, Loader=YamlLoader)  # the numbers a config file accepts
    except yaml.YAMLError:
        raise CnnlabError(f"{where}: the value {raw!r} is not valid YAML.") from None
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: depth + 1], where, create=True)
    last = parts[-1]
    if isinstance(last, int):
        _step(node, last, parts, where, create=True)  # checks the index; one past the end appends
    elif not isinstance(node, dict):
        raise CnnlabError(f"{where}: {format_path(parts[:-1])} is not a mapping.")
    node[last] = value
    return format_path(parts)


def parse_key_path(key: str, where: str) -> list[str | int]:
    """`model.layers[0].filters` as ["model", "layers", 0, "filters"]; `where` starts the error message."""
    if not KEY_PATH.fullmatch(key):
        raise CnnlabError(
            f"{where}: {key!r} is not a key path; write keys joined by dots and list "
            "items by their number, e.g. train.epochs or model.layers[0].filters."
        )
    return [int(index) if index else (int(name) if name.isdigit() else name) for name, index in _PATH_PART.findall(key)]


def value_at(data: dict, key: str, where: str, null_ok: bool = False) -> Any:
    """The value at a key path such as `model.layers[1].units` (a CnnlabError if it does not exist).

    With `null_ok`, a key the data holds as null (a resolved config's `train.lr_schedule`,
    `data.image_size`) is None, and so is any path below it: `--set` takes those paths, and the
    schema, not the data, says whether what is set there is valid."""
    parts = parse_key_path(key, where)
    node: Any = data
    for depth, part in enumerate(parts):
        if null_ok and isinstance(node, dict) and part in node and node[part] is None:
            return None
        node = _step(node, part, parts[: depth + 1], where, create=False)
    return node


def _step(node: Any, part: str | int, so_far: list, where: str, create: bool) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list):
            raise CnnlabError(f"{where}: {format_path(so_far[:-1])} is not a list.")
        if part == len(node) and create:  # model.layers[8]=... on 8 layers: a new last item
            node.append({})
        elif part >= len(node):
            raise CnnlabError(
                f"{where}: {format_path(so_far)} does not exist "
                f"(the list has {len(node)} items" + (f"; [{len(node)}] appends one)." if create else ").")
            )
        return node[part]
    if not isinstance(node, dict):
        raise CnnlabError(f"{where}: {format_path(so_far[:-1])} is not a mapping.")
    if part not in node or node[part] is None:
        if not create:
            valid = f"; valid keys there: {', '.join(map(str, node))}" if node else ""
            raise CnnlabError(f"{where}: {format_path(so_far)} does not exist{did_you_mean(str(part), list(map(str, node)))}{valid}.")
        node[part] = {}
    if so_far == ["train", "loss"] and isinstance(node[part], str):  # --set train.loss.label_smoothing=0.1
        node[part] = {"name": node[part]}
    return node[part]


def format_path(loc: list | tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
