"""Starting weights (`train.init_from`): a run or model file, checked layer by layer against the config.

`starting_weights` loads the file the way `cnnlab.checkpoint` loads any model (its config read
first, Lambda layers refused, Keras' safe mode) and compares the shapes of every layer with
weights against the config's model, naming the first that differs; `StartingWeights.apply`
then copies them into the model that trains.

Example:
    start = starting_weights(keras, cfg, plan, "configs/cnn.yaml", quiet=False)
    start.apply(model)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab import rundir
from cnnlab.backend import step
from cnnlab.checkpoint import load_model_file, why_no_checkpoint
from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.model import ModelPlan, build_model


@dataclass
class StartingWeights:
    """Where a run starts from (`train.init_from`): the model file, and the weights of each layer that has some."""

    path: Path
    weights: list[list[np.ndarray]]

    def apply(self, model) -> None:
        for layer, weights in zip([layer for layer in model.layers if layer.weights], self.weights):
            layer.set_weights(weights)


def starting_weights(keras, cfg: Config, plan: ModelPlan, source, quiet: bool) -> StartingWeights:
    """The weights of `train.init_from`, checked layer by layer against the config's model."""
    given = Path(cfg.train.init_from)
    where = f"{source}: train.init_from: {given}"
    if given.is_dir():
        if not (given / rundir.CONFIG).is_file() or not (given / rundir.RUN).is_file():
            raise CnnlabError(f"{where}: is a folder but not a cnnlab run directory; give a run or a "
                              f"{', '.join(rundir.MODEL_SUFFIXES)} file.")
        run = rundir.open_run(given)
        path = run.checkpoint
        if not path.exists():
            raise CnnlabError(f"{where}: the run has no {rundir.BEST}: {why_no_checkpoint(run)}")
    elif not given.exists():
        raise CnnlabError(f"{where}: no such run directory or model file.")
    elif given.suffix.lower() not in rundir.MODEL_SUFFIXES:
        raise CnnlabError(f"{where}: is not a run directory or a {', '.join(rundir.MODEL_SUFFIXES)} file.")
    else:
        path = given
    with step(f"loading the starting weights from {path}", quiet):
        try:
            theirs = load_model_file(path, unsafe_hint=" A starting point has to load without running code.")
        except CnnlabError as exc:
            raise CnnlabError(f"{source}: train.init_from: {exc}") from None
    ours = build_model(cfg, plan.input_shape)
    config_index = [index for index, layer in enumerate(cfg.model.layers) if layer.type != "input"]
    their_layers = [(i, layer) for i, layer in enumerate(theirs.layers) if layer.weights]
    our_layers = [(config_index[i], layer) for i, layer in enumerate(ours.layers) if layer.weights]
    for pair, mine in itertools.zip_longest(their_layers, our_layers):
        if pair is None:
            j = mine[0]
            raise CnnlabError(
                f"{where}: has {len(their_layers)} layers with weights, this config's model {len(our_layers)}: "
                f"model.layers[{j}] ({cfg.model.layers[j].type}) has none to start from."
            )
        if mine is None:
            raise CnnlabError(
                f"{where}: has {len(their_layers)} layers with weights, this config's model only {len(our_layers)}: "
                f"its layer {pair[0]} ({_kind(pair[1])}) has no counterpart."
            )
        (i, layer), (j, target) = pair, mine
        have = [tuple(w.shape) for w in layer.weights]
        need = [tuple(w.shape) for w in target.weights]
        if have != need:
            if len(have) == len(need):
                have, need = next((h, n) for h, n in zip(have, need) if h != n)
            raise CnnlabError(
                f"{where}: layer {i} ({_kind(layer)}) has weights of shape {_shapes(have)}, this config's "
                f"model.layers[{j}] ({cfg.model.layers[j].type}) needs {_shapes(need)}."
            )
    return StartingWeights(path, [layer.get_weights() for _, layer in their_layers])


def _kind(layer) -> str:
    """A Keras layer's kind as a config names it: Dense -> dense, Conv2D -> conv2d."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", type(layer).__name__).lower()


def _shapes(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
