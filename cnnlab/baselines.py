"""Classical baselines on a config's data: a linear SVM and k-means, to put next to a network.

Both see exactly what a network trained from the same config sees: `cnnlab.data.prepare`
with the config's data section (scale, train/test subsets, the validation split), each
image flattened to one vector of pixels. The model section of the config is not used.

- svm: scikit-learn's `LinearSVC` (one-vs-rest, squared hinge, C=1), fitted on the
  training split.
- kmeans: `KMeans` with one cluster per class (or `clusters`), fitted on the training
  images without their labels; each cluster then takes the majority label of the training
  images in it, and a test image gets the label of its nearest cluster.

Each run writes a run directory `<runs_dir>/<name>-<method>-<timestamp>/` with
config.yaml, run.json and metrics.json (validation and test accuracy, timing).

Runtime on 2 CPU cores, full MNIST (48,000 training images): LinearSVC takes minutes,
k-means well under one; `--set data.train_samples=10000` makes the SVM a few times faster.

Example:
    cfg = load_config("configs/dnn.yaml")
    result = run_baseline(cfg, "svm", runs_dir="runs")
    result.metrics["test_accuracy"]  # about 0.92 on MNIST
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab import rundir
from cnnlab.config import Config
from cnnlab.data import describe, prepare
from cnnlab.errors import CnnlabError

METHODS = ("svm", "kmeans")


@dataclass
class BaselineResult:
    run_dir: Path
    metrics: dict


def run_baseline(cfg: Config, method: str, runs_dir: str | Path = "runs", clusters: int | None = None,
                 echo: Callable[[str], None] = print) -> BaselineResult:
    """Fit a classical baseline on `cfg`'s data and score it; returns the run directory and metrics.

    Args:
        cfg: a validated config; only its `name`, `seed` and `data` section are used.
        method: "svm" (linear SVM) or "kmeans" (clusters mapped to their majority label).
        runs_dir: where the run directory is created.
        clusters: k-means only: the number of clusters (default: one per class).
        echo: where progress lines go.
    """
    if method not in METHODS:
        raise CnnlabError(f"--method {method!r}: unknown baseline; valid: {', '.join(METHODS)}.")
    info = describe(cfg.data)
    if clusters is not None and (method != "kmeans" or clusters < 1):
        raise CnnlabError(f"--clusters {clusters}: only for --method kmeans, and at least 1.")
    splits = prepare(cfg, (int(np.prod(info.sample_shape)),), one_hot=False)
    x_train, x_val, x_test = (None if x is None else np.asarray(x) for x in (splits.x_train, splits.x_val, splits.x_test))
    run_dir = rundir.create_run_dir(runs_dir, f"{cfg.name}-{method}")
    rundir.write_text(run_dir / rundir.CONFIG, cfg.to_yaml())
    rundir.write_json(run_dir / rundir.RUN, {
        "name": f"{cfg.name}-{method}", "kind": "baseline", "method": method, "status": "running",
        "started": _now(),
    })
    echo(f"run directory: {run_dir}")
    echo(f"fitting {method} on {len(splits.x_train):,} {cfg.data.dataset} training samples ...")
    started = time.perf_counter()
    if method == "svm":
        predict, details = _fit_svm(cfg, x_train, splits.y_train)
    else:
        predict, details = _fit_kmeans(cfg, x_train, splits.y_train, clusters or info.num_classes)
    seconds = time.perf_counter() - started
    metrics = {"method": method, **details}
    if x_val is not None:
        metrics["val_accuracy"] = float(np.mean(predict(x_val) == splits.y_val))
    metrics.update(
        test_accuracy=float(np.mean(predict(x_test) == splits.labels_test)),
        test_samples=len(splits.x_test), train_samples=len(splits.x_train), fit_seconds=round(seconds, 2),
    )
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    rundir.update_json(run_dir / rundir.RUN, status="completed", finished=_now())
    val = f"validation accuracy {metrics['val_accuracy']:.4f}, " if "val_accuracy" in metrics else ""
    echo(f"{details['model']}: {val}test accuracy {metrics['test_accuracy']:.4f} (fit {seconds:.1f} s)")
    return BaselineResult(run_dir, metrics)


def _fit_svm(cfg: Config, x: np.ndarray, y: np.ndarray):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=1.0, random_state=cfg.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return svm.predict, {"model": "LinearSVC(C=1.0)", "converged": converged}


def _fit_kmeans(cfg: Config, x: np.ndarray, y: np.ndarray, clusters: int):
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=clusters, n_init=10, random_state=cfg.seed).fit(x)
    # each cluster speaks for the label most of its training images have
    label_of = np.array([np.bincount(y[kmeans.labels_ == c]).argmax() if np.any(kmeans.labels_ == c) else 0
                         for c in range(clusters)])
    return (lambda images: label_of[kmeans.predict(images)]), {
        "model": f"KMeans({clusters} clusters) -> majority label", "clusters": clusters,
        "cluster_labels": label_of.tolist(),
    }


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
