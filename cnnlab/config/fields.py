"""The field types every config section is made of: strict sections, sizes, names Keras knows.

Example:
    class Pool(Section):
        pool_size: Size2D = (2, 2)    # `pool_size: 3` means (3, 3)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

ActivationName = Literal[
    "linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu",
    "elu", "selu", "gelu", "silu", "swish", "softplus", "softsign", "relu6", "hard_sigmoid",
]
InitializerName = Literal[
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
    "lecun_uniform", "lecun_normal", "zeros", "ones", "random_normal", "random_uniform",
]
Padding = Literal["valid", "same"]
PositiveInt = Annotated[int, Field(gt=0)]

def as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # YAML has lists; the schema says tuples


def as_pair(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if not isinstance(value, (list, tuple)):
        raise PydanticCustomError("size_2d", "must be a whole number like 5 or a pair like [5, 3]")
    return tuple(value)


Size2D = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(as_pair)]  # 5 means (5, 5)


class Section(BaseModel):
    """A config section: unknown keys, quoted numbers, .inf and .nan are errors."""


    # strict: YAML's `yes`/`true` must not become units: 1, nor 2.5 become 2 (an int still makes a float);
    # no .inf/.nan: no rate, scale or size in the schema means anything infinite or undefined
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
