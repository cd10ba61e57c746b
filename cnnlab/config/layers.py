"""The layer types of `model.layers`: one class each, and adding a type is adding one class here.

Each class is the layer's schema (its keys, types and defaults), and says two more things:
- `output(shape, where)`: its output shape and parameter count, by plain arithmetic (no
  TensorFlow), so `cnnlab.model.check_model` finds an impossible shape in a second; `where`
  names the layer in the error;
- `build(keras, dtype)`: the Keras layer (`cnnlab.model.build_model` stacks them).
`spatial` is True for a layer that needs an image (height, width, channels) input.
`LAYER_TYPES` lists them; `Layer` is their union, tagged by `type`.

Example:
    layer = DenseLayer(type="dense", units=10)
    layer.output((784,), "model.layers[1]")   # ((10,), 7850)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Field

from cnnlab.config.fields import (
    ActivationName,
    InitializerName,
    Padding,
    PositiveInt,
    Section,
    Size2D,
    as_tuple,
)
from cnnlab.errors import CnnlabError

Shape = tuple[int, ...]


class _LayerType(Section):
    spatial: ClassVar[bool] = False  # needs an image input (height, width, channels)

    def output(self, shape: Shape, where: str) -> tuple[Shape, int]:
        """The output shape for an input of `shape` (one sample), and the layer's parameter count."""
        return shape, 0

    def build(self, keras, dtype: str):
        raise NotImplementedError(type(self).__name__)


class InputLayer(_LayerType):
    """An explicit input shape; normally the dataset decides it."""

    type: Literal["input"]
    shape: Annotated[tuple[PositiveInt, ...], BeforeValidator(as_tuple)]


class FlattenLayer(_LayerType):
    type: Literal["flatten"]

    def output(self, shape, where):
        return (math.prod(shape),), 0

    def build(self, keras, dtype):
        return keras.layers.Flatten(dtype=dtype)


class Regularizer(Section):
    """A penalty on a layer's weights added to the training loss (keras.regularizers):
    `l1 * sum(|w|) + l2 * sum(w**2)`, e.g. `kernel_regularizer: {l2: 1.0e-4}`."""

    l1: Annotated[float, Field(ge=0.0)] = 0.0
    l2: Annotated[float, Field(ge=0.0)] = 0.0

    def build(self, keras):
        if not (self.l1 or self.l2):
            return None
        if self.l1 and self.l2:
            return keras.regularizers.L1L2(l1=self.l1, l2=self.l2)
        return keras.regularizers.L1(self.l1) if self.l1 else keras.regularizers.L2(self.l2)


def _regularizer(keras, penalty: Regularizer | None):
    return penalty.build(keras) if penalty is not None else None


class DenseLayer(_LayerType):
    type: Literal["dense"]
    units: PositiveInt
    activation: ActivationName = "linear"
    use_bias: bool = True
    kernel_initializer: InitializerName = "glorot_uniform"
    kernel_regularizer: Regularizer | None = None

    def output(self, shape, where):
        return (*shape[:-1], self.units), shape[-1] * self.units + (self.units if self.use_bias else 0)

    def build(self, keras, dtype):
        return keras.layers.Dense(
            self.units, activation=self.activation, use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
            kernel_regularizer=_regularizer(keras, self.kernel_regularizer), dtype=dtype,
        )


def spatial_output(shape: Shape, size, strides, padding: str, what: str, where: str) -> tuple[int, int]:
    """Height and width after a window of `size` slides with `strides`: (H + 2P - F) / S + 1."""
    out = []
    for dim, f, s in zip(shape[:2], size, strides):
        if padding == "same":
            out.append(math.ceil(dim / s))
        elif dim < f:
            raise CnnlabError(
                f"{where}: {what} {size[0]}x{size[1]} does not fit its {shape[0]}x{shape[1]}x{shape[2]} "
                f"input with padding 'valid'; use a smaller {what}, padding: same, or fewer pooling layers before it."
            )
        else:
            out.append((dim - f) // s + 1)
    return out[0], out[1]


class Conv2DLayer(_LayerType):
    spatial: ClassVar[bool] = True
    type: Literal["conv2d"]
    filters: PositiveInt
    kernel_size: Size2D
    strides: Size2D = (1, 1)
    padding: Padding = "valid"
    activation: ActivationName = "linear"
    use_bias: bool = True
    kernel_initializer: InitializerName = "glorot_uniform"
    kernel_regularizer: Regularizer | None = None

    def output(self, shape, where):
        out = spatial_output(shape, self.kernel_size, self.strides, self.padding, "kernel", where)
        k = self.kernel_size[0] * self.kernel_size[1] * shape[2]
        return (*out, self.filters), k * self.filters + (self.filters if self.use_bias else 0)

    def build(self, keras, dtype):
        return keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding, activation=self.activation,
            use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
            kernel_regularizer=_regularizer(keras, self.kernel_regularizer), dtype=dtype,
        )


class _PerChannelConv(_LayerType):
    """The settings a depthwise convolution shares with a separable one (which adds its 1x1 `filters`)."""

    spatial: ClassVar[bool] = True
    kernel_size: Size2D
    strides: Size2D = (1, 1)
    padding: Padding = "valid"
    depth_multiplier: PositiveInt = 1
    activation: ActivationName = "linear"
    use_bias: bool = True

    def _spatial(self, shape, where) -> tuple[int, int]:
        return spatial_output(shape, self.kernel_size, self.strides, self.padding, "kernel", where)

    def _depthwise_params(self, shape) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * shape[2] * self.depth_multiplier


class SeparableConv2DLayer(_PerChannelConv):
    """A depthwise convolution per channel, then a 1x1 convolution across channels (keras.layers.SeparableConv2D)."""

    type: Literal["separable_conv2d"]
    filters: PositiveInt

    def output(self, shape, where):
        pointwise = shape[2] * self.depth_multiplier * self.filters
        return ((*self._spatial(shape, where), self.filters),
                self._depthwise_params(shape) + pointwise + (self.filters if self.use_bias else 0))

    def build(self, keras, dtype):
        return keras.layers.SeparableConv2D(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
            depth_multiplier=self.depth_multiplier, activation=self.activation, use_bias=self.use_bias, dtype=dtype,
        )


class DepthwiseConv2DLayer(_PerChannelConv):
    """One kernel per input channel (times depth_multiplier), no mixing across channels (keras.layers.DepthwiseConv2D)."""

    type: Literal["depthwise_conv2d"]

    def output(self, shape, where):
        channels = shape[2] * self.depth_multiplier
        return (*self._spatial(shape, where), channels), self._depthwise_params(shape) + (channels if self.use_bias else 0)

    def build(self, keras, dtype):
        return keras.layers.DepthwiseConv2D(
            self.kernel_size, strides=self.strides, padding=self.padding, depth_multiplier=self.depth_multiplier,
            activation=self.activation, use_bias=self.use_bias, dtype=dtype,
        )


class PoolingLayer(_LayerType):
    spatial: ClassVar[bool] = True
    type: Literal["max_pooling2d", "average_pooling2d"]
    pool_size: Size2D = (2, 2)
    strides: Size2D | None = None  # None: same as pool_size, as in Keras
    padding: Padding = "valid"

    def output(self, shape, where):
        out = spatial_output(shape, self.pool_size, self.strides or self.pool_size, self.padding, "pool", where)
        return (*out, shape[2]), 0

    def build(self, keras, dtype):
        cls = keras.layers.MaxPooling2D if self.type == "max_pooling2d" else keras.layers.AveragePooling2D
        return cls(self.pool_size, strides=self.strides, padding=self.padding, dtype=dtype)


class GlobalPoolingLayer(_LayerType):
    """The average or the maximum of each channel over the whole image: (H, W, C) -> (C,), no flatten needed."""

    spatial: ClassVar[bool] = True
    type: Literal["global_average_pooling2d", "global_max_pooling2d"]

    def output(self, shape, where):
        return (shape[2],), 0

    def build(self, keras, dtype):
        if self.type == "global_max_pooling2d":
            return keras.layers.GlobalMaxPooling2D(dtype=dtype)
        return keras.layers.GlobalAveragePooling2D(dtype=dtype)


def _padding_pair(value: Any) -> Any:
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else as_tuple(value)


class ZeroPadding2DLayer(_LayerType):
    """Rows and columns of zeros around the image: `padding: 2` adds 2 on every side, [1, 2] 1 above and
    below and 2 left and right (keras.layers.ZeroPadding2D)."""

    spatial: ClassVar[bool] = True
    type: Literal["zero_padding2d"]
    padding: Annotated[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]],
                       BeforeValidator(_padding_pair)] = (1, 1)

    def output(self, shape, where):
        return (shape[0] + 2 * self.padding[0], shape[1] + 2 * self.padding[1], shape[2]), 0

    def build(self, keras, dtype):
        return keras.layers.ZeroPadding2D(self.padding, dtype=dtype)


class DropoutLayer(_LayerType):
    type: Literal["dropout"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0)]

    def build(self, keras, dtype):
        return keras.layers.Dropout(self.rate, dtype=dtype)


class SpatialDropout2DLayer(_LayerType):
    """Dropout of whole feature maps (channels) instead of single values (keras.layers.SpatialDropout2D)."""

    spatial: ClassVar[bool] = True
    type: Literal["spatial_dropout2d"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0)]

    def build(self, keras, dtype):
        return keras.layers.SpatialDropout2D(self.rate, dtype=dtype)


class BatchNormalizationLayer(_LayerType):
    type: Literal["batch_normalization"]
    momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    epsilon: Annotated[float, Field(gt=0.0)] = 1e-3

    def output(self, shape, where):
        return shape, 4 * shape[-1]

    def build(self, keras, dtype):
        return keras.layers.BatchNormalization(momentum=self.momentum, epsilon=self.epsilon, dtype=dtype)


class LayerNormalizationLayer(_LayerType):
    """Normalises each sample over its last axis, with a learnt scale and offset (keras.layers.LayerNormalization)."""

    type: Literal["layer_normalization"]
    epsilon: Annotated[float, Field(gt=0.0)] = 1e-3

    def output(self, shape, where):
        return shape, 2 * shape[-1]

    def build(self, keras, dtype):
        return keras.layers.LayerNormalization(epsilon=self.epsilon, dtype=dtype)


class ActivationLayer(_LayerType):
    type: Literal["activation"]
    activation: ActivationName

    def build(self, keras, dtype):
        return keras.layers.Activation(self.activation, dtype=dtype)


LAYER_TYPES = (
    InputLayer, FlattenLayer, DenseLayer, Conv2DLayer, SeparableConv2DLayer, DepthwiseConv2DLayer, PoolingLayer,
    GlobalPoolingLayer, ZeroPadding2DLayer, DropoutLayer, SpatialDropout2DLayer, BatchNormalizationLayer,
    LayerNormalizationLayer, ActivationLayer,
)
Layer = Annotated[Union[LAYER_TYPES], Field(discriminator="type")]  # Union of a tuple: every class of the table


def layer_type_names() -> list[str]:
    """Every `type:` a layer may have, in the table's order."""
    return [name for cls in LAYER_TYPES for name in cls.model_fields["type"].annotation.__args__]
