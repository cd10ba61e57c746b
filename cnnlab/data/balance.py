"""Uneven classes: when a data set counts as uneven, and the class weights that even out its loss.

`train.class_weight: auto` weighs class c by n_samples / (n_classes * count_c), as
scikit-learn's `compute_class_weight("balanced")`: every class then adds the same total to
the loss. `{class name: weight}` sets them by hand (a class left out weighs 1). The weights
reach Keras' `fit` as its `class_weight` and cnnlab's own loops as a per-sample weight.

Example:
    class_weights("auto", np.array([0, 0, 0, 1]), ("ant", "bee"), "c.yaml")  # {0: 0.667, 1: 2.0}
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import CnnlabError

IMBALANCE_RATIO = 3.0  # largest / smallest class above which a data set counts as uneven


def is_uneven(counts) -> bool:
    """Whether the largest of `counts` (images per class; empty classes aside) exceeds IMBALANCE_RATIO x the smallest."""
    present = [n for n in counts if n > 0]
    return len(present) > 1 and max(present) > IMBALANCE_RATIO * min(present)


def class_weights(setting, labels: np.ndarray, class_names: tuple[str, ...], where: str) -> dict[int, float] | None:
    """The weight of each class id for `train.class_weight` (None: unweighted).

    Args:
        setting: None, "auto", or {class name: weight}.
        labels: the training samples' class ids (validation rows left out).
        class_names: every class's name, by id.
        where: the config, for messages.
    """
    if setting is None:
        return None
    if setting == "auto":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        if len(present) < len(class_names):
            missing = class_names[next(i for i in range(len(class_names)) if i not in set(present.tolist()))]
            raise CnnlabError(f"{where}: train.class_weight: auto: class {missing!r} has no training samples, so it "
                              "has no weight; give the weights by name instead.")
        weights = compute_class_weight("balanced", classes=present, y=labels)
        return {int(c): float(w) for c, w in zip(present, weights)}
    unknown = [name for name in setting if name not in class_names]
    if unknown:
        raise CnnlabError(f"{where}: train.class_weight: {unknown[0]!r} is not a class of the data set "
                          f"(classes: {', '.join(class_names)}).")
    return {i: float(setting.get(name, 1.0)) for i, name in enumerate(class_names)}


def named(weights: dict[int, float] | None, class_names: tuple[str, ...]) -> dict[str, float] | None:
    """The weights by class name, as a run records them."""
    return None if weights is None else {class_names[i]: round(w, 6) for i, w in weights.items()}

