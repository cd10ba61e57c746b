"""Model checking (no TensorFlow) and building (Keras agrees with the arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.config import load_config, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.model import _check_memory, build_model, check_model, class_predictions, estimate_memory

from conftest import REPO, small_dnn


def test_dnn_has_the_reference_parameter_count():
    cfg = load_config(REPO / "configs" / "dnn.yaml")
    plan = check_model(cfg, "dnn.yaml")
    assert plan.params == 101_770
    model = build_model(cfg, plan.input_shape)
    assert model.count_params() == 101_770


def test_cnn_shapes_match_keras():
    cfg = load_config(REPO / "configs" / "cnn.yaml")
    plan = check_model(cfg, "cnn.yaml")
    model = build_model(cfg, plan.input_shape)
    assert plan.input_shape == (28, 28, 1)
    assert [layer.output_shape for layer in plan.layers] == [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert plan.params == model.count_params() == 3_156_098


def _conv_config(**conv):
    data = small_dnn()
    data["model"]["layers"] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, **conv},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    return data


def test_kernel_larger_than_its_input_names_the_layer_and_shapes():
    data = _conv_config(kernel_size=14)
    with pytest.raises(CnnlabError) as err:
        check_model(validate_config(data, "c.yaml"), "c.yaml")
    message = str(err.value)
    assert "model.layers[2] (conv2d)" in message and "14x14" in message and "13x13x8" in message


def test_same_padding_makes_the_big_kernel_fit():
    plan = check_model(validate_config(_conv_config(kernel_size=14, padding="same"), "c"), "c")
    assert plan.layers[2].output_shape == (13, 13, 8)


@pytest.mark.parametrize("change, words", [
    (lambda layers: layers.__setitem__(-1, {"type": "dense", "units": 7, "activation": "softmax"}),
     ["model.layers[4].units", "10 classes"]),
    (lambda layers: layers.pop(3), ["add a flatten layer"]),
    (lambda layers: layers.insert(4, {"type": "conv2d", "filters": 2, "kernel_size": 1}),
     ["model.layers[4] (conv2d)", "needs an image input"]),
])
def test_impossible_architectures(change, words):
    data = _conv_config()
    change(data["model"]["layers"])
    with pytest.raises(CnnlabError) as err:
        check_model(validate_config(data, "c"), "c")
    for word in words:
        assert word in str(err.value)


def test_binary_crossentropy_on_ten_classes_is_refused():
    with pytest.raises(CnnlabError, match="binary_crossentropy is for 2 classes"):
        check_model(validate_config(small_dnn(loss="binary_crossentropy"), "c"), "c")


def test_monitoring_validation_without_validation_data_is_refused():
    data = small_dnn()
    data["data"]["validation"] = {"method": "none"}
    with pytest.raises(CnnlabError, match="train.checkpoint.monitor: 'val_accuracy' is not computed"):
        check_model(validate_config(data, "c"), "c")


def test_class_predictions():
    assert class_predictions([[0.1, 0.9], [0.8, 0.2]]).tolist() == [1, 0]
    assert class_predictions([[0.2], [0.7]]).tolist() == [0, 1]


def test_memory_estimate_of_the_dnn():
    cfg = load_config(REPO / "configs" / "dnn.yaml")  # adam, batch 32
    need = estimate_memory(cfg, check_model(cfg, "dnn.yaml"))
    assert need.weights == 101_770 * 4
    assert need.training == 101_770 * 4 * 4  # weights, gradients, Adam's two slots
    assert need.activations == 2 * (784 + 784 + 128 + 128 + 10) * 32 * 4  # input, each layer's output; and gradients


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd"}, {"name": "sgd", "momentum": 0.9}, {"name": "adam"}, {"name": "adagrad"},
    {"name": "rmsprop"}, {"name": "rmsprop", "momentum": 0.9},
])
def test_optimizer_state_in_the_estimate_is_what_keras_allocates(optimizer):
    import keras

    cfg = validate_config(small_dnn(optimizer=optimizer), "c")
    plan = check_model(cfg, "c")
    model = build_model(cfg, plan.input_shape)
    options = {key: value for key, value in optimizer.items() if key != "name"}
    keras_optimizer = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad,
                       "rmsprop": keras.optimizers.RMSprop}[optimizer["name"]](**options)
    keras_optimizer.build(model.trainable_variables)
    state = sum(int(np.prod(v.shape)) for v in keras_optimizer.variables if len(v.shape) > 0)  # not the step counter
    need = estimate_memory(cfg, plan)
    assert need.training - 2 * need.weights == state * 4


def test_a_model_that_cannot_fit_in_memory_is_refused_before_tensorflow():
    cfg = load_config(REPO / "configs" / "dnn.yaml", ["model.layers[1].units=1000000000"])
    with pytest.raises(CnnlabError) as err:
        check_model(cfg, "dnn.yaml")
    message = str(err.value)
    assert message.startswith("dnn.yaml: model.layers[1] (dense) has 785,000,000,000 parameters (2.9 TiB as float32)")
    assert "needs about 12.0 TiB to train" in message and "use fewer units" in message


def test_the_memory_limit_is_what_the_machine_has():
    cfg = load_config(REPO / "configs" / "dnn.yaml")
    plan = check_model(cfg, "dnn.yaml")  # about 2 MiB
    _check_memory(cfg, plan, "dnn.yaml", available=100 * 2**20)
    with pytest.raises(CnnlabError, match=r"needs about 2.0 MiB to train, and this machine has 1.0 MiB of memory free"):
        _check_memory(cfg, plan, "dnn.yaml", available=2**20)
    wide = load_config(REPO / "configs" / "cnn.yaml", ["train.batch_size=4096"])
    with pytest.raises(CnnlabError, match=r"model.layers\[0\] \(conv2d\) outputs 25,088 values per sample; "
                                          r"for a batch of 4,096 \(train.batch_size\)"):
        _check_memory(wide, check_model(wide, "cnn.yaml"), "cnn.yaml", available=2**30)


# --- the layer table: every type checks its shapes as Keras builds them -----------------------

# one config per layer type (input aside), each after a small conv so spatial types get an image
_EVERY_TYPE = {
    "flatten": {"type": "flatten"},
    "dense": {"type": "dense", "units": 7, "activation": "relu"},
    "conv2d": {"type": "conv2d", "filters": 5, "kernel_size": [3, 2], "strides": 2},
    "separable_conv2d": {"type": "separable_conv2d", "filters": 6, "kernel_size": 3, "depth_multiplier": 2,
                         "padding": "same", "activation": "relu"},
    "depthwise_conv2d": {"type": "depthwise_conv2d", "kernel_size": 3, "depth_multiplier": 3, "strides": 2},
    "max_pooling2d": {"type": "max_pooling2d", "pool_size": 3, "strides": 2},
    "average_pooling2d": {"type": "average_pooling2d", "padding": "same"},
    "global_average_pooling2d": {"type": "global_average_pooling2d"},
    "global_max_pooling2d": {"type": "global_max_pooling2d"},
    "zero_padding2d": {"type": "zero_padding2d", "padding": [1, 3]},
    "dropout": {"type": "dropout", "rate": 0.3},
    "spatial_dropout2d": {"type": "spatial_dropout2d", "rate": 0.2},
    "batch_normalization": {"type": "batch_normalization"},
    "layer_normalization": {"type": "layer_normalization", "epsilon": 1e-5},
    "activation": {"type": "activation", "activation": "gelu"},
}


def test_every_layer_type_of_the_table_has_a_case_here():
    from cnnlab.config.layers import layer_type_names

    assert sorted(_EVERY_TYPE) == sorted(set(layer_type_names()) - {"input"})


@pytest.mark.parametrize("kind", sorted(_EVERY_TYPE))
def test_each_layer_type_checks_the_shapes_and_parameters_keras_builds(kind):
    data = small_dnn()
    head = [{"type": "flatten"}] if kind not in ("flatten", "dense", "global_average_pooling2d",
                                                 "global_max_pooling2d") else []
    data["model"]["layers"] = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        _EVERY_TYPE[kind],
        *head,
        *([{"type": "flatten"}] if kind == "dense" else []),
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    cfg = validate_config(data, "c.yaml")
    plan = check_model(cfg, "c.yaml")
    model = build_model(cfg, plan.input_shape)
    assert [layer.output_shape for layer in plan.layers] == [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert [layer.params for layer in plan.layers] == [layer.count_params() for layer in model.layers]
    assert plan.layers[1].kind == kind


@pytest.mark.parametrize("kind", ["separable_conv2d", "depthwise_conv2d", "global_average_pooling2d",
                                  "global_max_pooling2d", "zero_padding2d", "spatial_dropout2d"])
def test_an_image_layer_after_flatten_is_refused_before_tensorflow(kind):
    data = small_dnn()
    data["model"]["layers"] = [{"type": "flatten"}, _EVERY_TYPE[kind], {"type": "dense", "units": 10,
                                                                        "activation": "softmax"}]
    with pytest.raises(CnnlabError, match=rf"model.layers\[1\] \({kind}\): needs an image input"):
        check_model(validate_config(data, "c.yaml"), "c.yaml")


def test_every_layer_type_is_in_the_summary_command(runner, tmp_path):
    import yaml

    from cnnlab.cli import app

    data = small_dnn()
    data["model"]["layers"] = [
        {"type": "zero_padding2d", "padding": 1}, {"type": "conv2d", "filters": 4, "kernel_size": 3},
        _EVERY_TYPE["separable_conv2d"], _EVERY_TYPE["depthwise_conv2d"], _EVERY_TYPE["spatial_dropout2d"],
        _EVERY_TYPE["layer_normalization"], _EVERY_TYPE["global_max_pooling2d"],
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    path = tmp_path / "layers.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["summary", str(path)])
    assert result.exit_code == 0, result.output
    for keras_name in ("ZeroPadding2D", "SeparableConv2D", "DepthwiseConv2D", "SpatialDropout2D",
                       "LayerNormalization", "GlobalMaxPooling2D"):
        assert keras_name in result.output


def test_the_readme_lists_every_layer_type():
    from cnnlab.config.layers import layer_type_names

    text = " ".join((REPO / "README.md").read_text().split())
    listed = text.split("Layer types: ", 1)[1].split(";", 1)[0]
    assert [name.strip() for name in listed.split(",")] == layer_type_names()
