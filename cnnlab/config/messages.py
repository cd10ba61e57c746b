"""pydantic's validation errors as one sentence each: the user's field path, what was received, what is valid.

Pydantic says `model.layers.2.dense.units`; the user wrote `model.layers[2].units`, and
reads "unknown key 'model.layers[2].unit' (did you mean 'units'?); valid keys here: ...".

Example:
    describe_error(exc.errors()[0], data)   # exc: a pydantic ValidationError of Config
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from pydantic import BaseModel

from cnnlab.config.keypaths import format_path
from cnnlab.config.schema import OWN_ERRORS, Config, Layer, LrSchedule, Optimizer
from cnnlab.config.yaml12 import YamlLoader
from cnnlab.errors import did_you_mean


def describe_error(error: dict, data: dict) -> str:
    """One sentence for the first pydantic error, with a user-facing field path."""
    loc = user_path(error["loc"], data)
    path = format_path(loc)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        model = _schema_at(loc[:-1], data)
        valid = sorted(model.model_fields) if model else []
        return (
            f"unknown key {path!r}{did_you_mean(str(loc[-1]), valid)}; "
            f"valid keys here: {', '.join(valid)}."
        )
    if kind == "union_tag_invalid":
        tag_key = error["ctx"]["discriminator"].strip("'")
        tags = re.findall(r"'([^']+)'", error["ctx"]["expected_tags"])
        what = {"type": "layer type", "optimizer": "optimizer", "lr_schedule": "learning-rate schedule"}.get(
            tag_key if tag_key == "type" else str(loc[-1]), "name")
        tag = str(error["ctx"]["tag"])
        return f"{path}.{tag_key}: unknown {what} {tag!r}{did_you_mean(tag, tags)}; valid: {', '.join(tags)}."
    if kind == "union_tag_not_found":
        tag_key = error["ctx"]["discriminator"].strip("'")
        union = _UNIONS.get(next((str(part) for part in reversed(loc) if not isinstance(part, int)), ""), ())
        tags = [tag for cls in union for tag in cls.model_fields[tag_key].annotation.__args__]
        return f"{path}: missing `{tag_key}`" + (f"; valid: {', '.join(tags)}." if tags else ".")
    if kind == "missing":
        return f"{path}: required field is missing."
    if kind == "literal_error":
        options = re.findall(r"'([^']+)'|(-?\d+)", error["ctx"]["expected"])
        options = [text or number for text, number in options]
        return (
            f"{path}: {value!r} is not valid{did_you_mean(str(value), options)}; "
            f"valid: {', '.join(options)}."
        )
    if kind == "string_pattern_mismatch" and loc == ["name"]:
        return (
            f"name: {value!r} is not a valid run name; use letters, digits and _ - . + "
            "(it becomes a folder name under the runs directory)."
        )
    if kind in OWN_ERRORS:  # raised by the schema's own validators, already a full sentence
        return f"{path}: {error['msg']}."
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{path}: expected a mapping of keys, got {value!r}."
    if kind in ("float_type", "int_type") and isinstance(value, str) and _is_number(value):
        return f"{path}: {value!r} is text because it is quoted; write the number without quotes ({value.strip()})."
    return f"{path}: {error['msg'].rstrip('.')} (got {value!r})."


def _is_number(text: str) -> bool:
    """Whether `text` unquoted would be a (finite) number in a config."""
    try:
        value = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError:
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _child(node: Any, part: Any) -> Any:
    if isinstance(part, int):
        return node[part] if isinstance(node, list) and part < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def user_path(loc: tuple, data: Any) -> list:
    """Pydantic's error location without the union tags it adds.

    Pydantic says `model.layers.2.dense.units`; the user wrote `model.layers[2].units`.
    """
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and part in (node.get("type"), node.get("name")):
            continue
        if isinstance(node, str) and part == "name":  # `loss: mse`, short for `loss: {name: mse}`
            continue
        out.append(part)
        node = _child(node, part)
    return out


_UNIONS: dict[str, tuple] = {
    "layers": Layer.__origin__.__args__,  # type: ignore[attr-defined]
    "optimizer": Optimizer.__origin__.__args__,  # type: ignore[attr-defined]
    "lr_schedule": LrSchedule.__origin__.__args__,  # type: ignore[attr-defined]
}


def _schema_at(path: list, data: Any) -> type[BaseModel] | None:
    """The schema class that describes the mapping found at `path` in the input."""
    model: Any = Config
    node: Any = data
    for part in path:
        node = _child(node, part)
        if not isinstance(part, int):
            model = _UNIONS.get(part) or _field_model(model, part)
        if isinstance(model, tuple) and part != "layers":  # a tagged union: the input's tag picks
            model = _tagged_class(model, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_model(model: Any, part: str) -> Any:
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
        return None
    annotation = model.model_fields[part].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _tagged_class(union: tuple, node: Any) -> Any:
    if not isinstance(node, dict):
        return None
    for cls in union:
        for key in ("type", "name"):
            field = cls.model_fields.get(key)
            if field is not None and node.get(key) in getattr(field.annotation, "__args__", ()):
                return cls
    return None
