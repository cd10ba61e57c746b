"""Training on several devices or processes with tf.distribute (`train.distribute`, docs/SCALING.md).

- `none`: one process on one device, as always.
- `mirrored`: `tf.distribute.MirroredStrategy` over every GPU of this machine (the CPU, one
  replica, when there is none); Keras' own `model.fit` trains, as its documentation says it can.
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, configured the standard way by
  `TF_CONFIG` (`cnnlab train CONFIG --workers H:P,H:P --worker-index I` writes it). Keras 3.15's
  `model.fit` fails under that strategy (docs/SCALING.md has the evidence), so `fit_distributed`
  trains with a strategy-aware step: `strategy.run` computes each replica's loss and gradients
  with the model's own Keras loss object and optimizer, `strategy.reduce` sums the loss and the
  correct predictions, and the same callbacks as `model.fit`'s (run recorder, early stopping,
  schedules, progress bar) see the same logs. Checkpoints, history and export stay the same.

Only the chief (the `chief` task, else worker 0, as TensorFlow decides) writes the run directory;
every other worker writes into a private temporary folder that is deleted when it ends. At start
the workers wait at most `peer_timeout()` seconds for each other, then compare a hash of their
configs over the collectives and refuse to train on different ones. A worker that dies makes the
others stop with `PeerLost` (TensorFlow's heartbeats notice within about 10 s); `--resume` on the
chief's run directory, on every worker, continues the job.

Example:
    os.environ["TF_CONFIG"] = tf_config(parse_workers("127.0.0.1:2222,127.0.0.1:2223"), 0)
    dist = start(cfg, "configs/dnn.yaml", device="cpu", echo=print)   # after init_backend
    with dist.scope():
        model = build_model(cfg, input_shape)
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cnnlab import rundir
from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.loop import class_weighting, gradient_update, run_epochs

PEER_TIMEOUT_ENV = "CNNLAB_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 120.0  # seconds every worker has to come up (TensorFlow itself waits forever)
_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
_CAUSE = re.compile(r"heartbeat|unhealthy|onnect|reset by peer|aborted|Socket closed", re.IGNORECASE)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


class PeerLost(CnnlabError):
    """A worker of a multi_worker job stopped (died, was killed, lost its network): training stopped."""


def peer_timeout() -> float:
    """How long a worker waits for the others at start ($CNNLAB_PEER_TIMEOUT seconds, default 120)."""
    raw = os.environ.get(PEER_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_PEER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CnnlabError(f"${PEER_TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0, e.g. 120.")
    return value


# --- the cluster: TF_CONFIG and --workers ----------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker job, from TF_CONFIG.

    Args:
        tasks: every task as (job, index, "host:port"), the chief first.
        job, index: this process's task (`worker` 1, or `chief` 0).
    """

    tasks: tuple[tuple[str, int, str], ...]
    job: str
    index: int

    @property
    def address(self) -> str:
        return next(address for job, index, address in self.tasks if (job, index) == (self.job, self.index))

    @property
    def chief(self) -> bool:
        return (self.job, self.index) == self.tasks[0][:2]

    def name(self, job: str | None = None, index: int | None = None) -> str:
        job, index = job or self.job, self.index if index is None else index
        return f"{job} {index} ({next(a for j, i, a in self.tasks if (j, i) == (job, index))})"


def parse_workers(text: str) -> list[str]:
    """`--workers 127.0.0.1:2222,127.0.0.1:2223`: the HOST:PORT of every worker, the chief first."""
    addresses = [part.strip() for part in text.split(",")]
    for address in addresses:
        match = _ADDRESS.fullmatch(address)
        if not match or not 0 < int(match["port"]) < 65536:
            raise CnnlabError(
                f"--workers {text!r}: {address!r} is not HOST:PORT (a host name or IP address and a port "
                "1-65535), e.g. --workers 10.0.0.1:2222,10.0.0.2:2222."
            )
    if len(addresses) < 2:
        raise CnnlabError(f"--workers {text!r}: a multi-worker job needs at least two workers, comma-separated.")
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        raise CnnlabError(f"--workers {text!r}: {twice[0]} is listed twice; each worker needs its own port.")
    return addresses


def tf_config(workers: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` (0 is the chief) of `workers`."""
    if not 0 <= index < len(workers):
        raise CnnlabError(f"--worker-index {index}: there are {len(workers)} workers in --workers, so the index "
                          f"is 0 to {len(workers) - 1} (0 is the chief, which writes the run directory).")
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def use_workers(workers: str | None, worker_index: int | None) -> None:
    """`--workers` and `--worker-index`: checked, then written to $TF_CONFIG for this process."""
    if workers is None and worker_index is None:
        return
    if workers is None or worker_index is None:
        raise CnnlabError("--workers and --worker-index go together: give every worker's HOST:PORT and this "
                          "process's place in that list, e.g. --workers 127.0.0.1:2222,127.0.0.1:2223 --worker-index 0.")
    os.environ["TF_CONFIG"] = tf_config(parse_workers(workers), worker_index)


def read_tf_config(text: str | None) -> Cluster:
    """The cluster of $TF_CONFIG, checked: valid JSON, a chief (or worker 0), this task listed in it."""
    where = "$TF_CONFIG"
    if not text:
        raise CnnlabError(
            "train.distribute is multi_worker but $TF_CONFIG is not set; set it as cluster managers do, or give "
            "`--workers HOST:PORT,HOST:PORT --worker-index I` (see docs/SCALING.md)."
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CnnlabError(f"{where} is not valid JSON ({exc.msg} at character {exc.pos}); expected e.g. "
                          '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
                          '"index": 0}}.') from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise CnnlabError(f"{where} needs a \"cluster\" mapping (job: [HOST:PORT, ...]) and a \"task\" "
                          "({\"type\": ..., \"index\": ...}).")
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise CnnlabError(f"{where}: cluster job {job!r} is not used by cnnlab's multi_worker training "
                              "(MultiWorkerMirroredStrategy); it takes jobs chief (at most one) and worker.")
        if not isinstance(addresses, list) or not all(isinstance(a, str) and _ADDRESS.fullmatch(a) for a in addresses):
            raise CnnlabError(f"{where}: cluster.{job} must be a list of HOST:PORT strings (got {addresses!r}).")
    if len(cluster.get("chief", [])) > 1:
        raise CnnlabError(f"{where}: cluster.chief lists {len(cluster['chief'])} tasks; a job has one chief.")
    tasks = tuple((job, i, a) for job in ("chief", "worker") for i, a in enumerate(cluster.get(job, [])))
    if not tasks:
        raise CnnlabError(f"{where} names no chief: its cluster has no chief and no worker task, so no process "
                          "would write the run directory; list the tasks as cluster.worker (worker 0 is the chief).")
    job, index = task.get("type"), task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not any((job, index) == t[:2] for t in tasks):
        listed = ", ".join(f"{j} {i}" for j, i, _ in tasks)
        raise CnnlabError(f"{where}: task {json.dumps(task)} is not in its cluster; "
                          f"it has {listed}.")
    return Cluster(tasks, job, index)


def _check_port_free(cluster: Cluster) -> None:
    """TensorFlow's gRPC server shares a port with SO_REUSEPORT and fails late; say it now."""
    port = int(cluster.address.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # a listener makes the bind fail; the TIME_WAIT connections of a worker that just ended do not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise CnnlabError(f"{cluster.name()}: port {port} is in use by another process on this machine; "
                              "give this worker a free port in --workers / $TF_CONFIG.") from None


# --- the strategy ------------------------------------------------------------------------


@dataclass
class Distributed:
    """A started strategy and what a run records about it.

    Args:
        kind: mirrored or multi_worker.
        strategy: the tf.distribute strategy.
        replicas: replicas in sync over all workers.
        global_batch: samples per training step over all replicas.
        cluster: the multi-worker job (None for mirrored).
    """

    kind: str
    strategy: object
    replicas: int
    global_batch: int
    batch_size_scope: str
    cluster: Cluster | None = None
    _private: Path | None = field(default=None, repr=False)

    @property
    def chief(self) -> bool:
        return self.cluster is None or self.cluster.chief

    def scope(self):
        return self.strategy.scope()

    def record(self) -> dict:
        """environment.json's `distribute`: strategy, replicas, workers, batches."""
        strategy = {"mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}[self.kind]
        return {"strategy": f"tf.distribute.{strategy}", "distribute": self.kind, "replicas": self.replicas,
                "workers": len(self.cluster.tasks) if self.cluster else 1, "global_batch": self.global_batch,
                "per_replica_batch": self.global_batch / self.replicas, "batch_size_scope": self.batch_size_scope,
                **({"cluster": [address for _, _, address in self.cluster.tasks]} if self.cluster else {})}

    def private_dir(self) -> Path:
        """A non-chief worker's own folder for the files a run writes; deleted by `close`."""
        if self._private is None:
            _remove_dead_workers_dirs()
            self._private = Path(tempfile.mkdtemp(prefix=f"cnnlab-{self.cluster.job}{self.cluster.index}-{os.getpid()}-"))
            atexit.register(self.close)  # also when an error ends the process before training does
        return self._private

    def private_copy(self, run_dir: Path) -> Path:
        """A non-chief worker resuming: the chief's run directory, copied to read and write privately."""
        target = self.private_dir() / run_dir.name
        shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("*.png", "tensorboard", "evaluation"))
        return target

    def close(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None


def _remove_dead_workers_dirs() -> None:
    """The private folders of workers that were killed (SIGKILL leaves no chance to delete them)."""
    for folder in Path(tempfile.gettempdir()).glob("cnnlab-*-*-*"):
        match = re.fullmatch(r"cnnlab-(?:chief|worker)\d+-(\d+)-\w+", folder.name)
        if match and folder.is_dir() and not rundir.process_alive({"pid": int(match[1]), "host": socket.gethostname()}):
            shutil.rmtree(folder, ignore_errors=True)


def no_distribute_record(cfg: Config) -> dict:
    return {"strategy": "none", "distribute": "none", "replicas": 1, "workers": 1,
            "global_batch": cfg.train.batch_size, "per_replica_batch": cfg.train.batch_size}


def check(cfg: Config, source: str) -> None:
    """What can be told before TensorFlow starts: the cluster, this worker's port, unsupported options."""
    if cfg.train.distribute == "none":
        return
    if cfg.train.loop == "gradient_tape":
        raise CnnlabError(f"{source}: train.loop gradient_tape is a one-process loop; with train.distribute "
                          f"{cfg.train.distribute} use train.loop fit (cnnlab then trains with the strategy).")
    if cfg.train.distribute == "multi_worker":
        other = [m for m in cfg.train.metrics if m != "accuracy"]
        if other:
            raise CnnlabError(f"{source}: train.metrics: {other[0]} is not computed by the multi_worker step "
                              "yet (it reports loss and accuracy); remove it or use train.distribute mirrored.")
        _check_port_free(read_tf_config(os.environ.get("TF_CONFIG")))


def chief(cfg: Config) -> bool:
    """Whether this process is the one that writes the run directory, told before TensorFlow starts."""
    return cfg.train.distribute != "multi_worker" or read_tf_config(os.environ.get("TF_CONFIG")).chief


def start(cfg: Config, source: str, device: str, echo: Callable[[str], None]) -> Distributed | None:
    """Make the strategy of `train.distribute` (None for none); call after init_backend.

    multi_worker waits at most `peer_timeout()` for every worker, then refuses a config whose
    hash differs from the chief's.
    """
    if cfg.train.distribute == "none":
        return None
    check(cfg, source)
    import tensorflow as tf

    if cfg.train.distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        replicas = strategy.num_replicas_in_sync
        dist = Distributed("mirrored", strategy, replicas, _global_batch(cfg, replicas), cfg.train.batch_size_scope)
        gpus = len(tf.config.list_logical_devices("GPU"))
        why = " (--device cpu)" if device == "cpu" else "" if gpus else " (TensorFlow sees no GPU)"
        echo(f"train.distribute mirrored: {replicas} replica(s) on {f'{gpus} GPU(s)' if gpus else 'the CPU'}{why}"
             + (", so it trains as without distribute" if replicas == 1 else "")
             + f"; global batch {dist.global_batch}")
        return dist

    cluster = read_tf_config(os.environ.get("TF_CONFIG"))
    timeout = peer_timeout()
    others = ", ".join(address for job, index, address in cluster.tasks if (job, index) != (cluster.job, cluster.index))
    echo(f"{cluster.name()} of {len(cluster.tasks)} workers"
         + (" (chief: writes the run directory)" if cluster.chief else f"; the chief {cluster.name(*cluster.tasks[0][:2])} "
            "writes the run directory") + f"; waiting up to {timeout:g} s for {others}")
    with _deadline(timeout, f"{cluster.name()}: the other workers ({others}) did not all come up within {timeout:g} s "
                            f"(${PEER_TIMEOUT_ENV}); start every worker of --workers / $TF_CONFIG, with the same list."):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        replicas = strategy.num_replicas_in_sync
        _same_config_everywhere(tf, strategy, cfg, cluster, replicas)
    return Distributed("multi_worker", strategy, replicas, _global_batch(cfg, replicas), cfg.train.batch_size_scope,
                       cluster)


def _global_batch(cfg: Config, replicas: int) -> int:
    batch = cfg.train.batch_size
    return batch * replicas if cfg.train.batch_size_scope == "per_replica" else batch


# Sleeps until its stdin closes (the block ended, or this process died) or the time is up; then
# says why and kills this process.
_WATCHDOG = """import os, select, signal, sys
if not select.select([sys.stdin], [], [], float(sys.argv[2]))[0]:
    sys.stderr.write(sys.argv[3] + "\\n"); sys.stderr.flush(); os.kill(int(sys.argv[1]), signal.SIGKILL)
"""


@contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """End this process with `message` on stderr if the block takes longer than `seconds`.

    A worker whose peers never come up waits inside TensorFlow's C++ code forever, holding
    Python's lock: no Python thread, signal handler or SIGTERM gets through (measured: 13
    minutes, then SIGKILL). So a small watchdog process says it and ends this one (SIGKILL:
    exit status 137, the only way out of that wait).
    """
    import subprocess

    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds), f"error: {message}"],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def config_hash(cfg: Config) -> list[float]:
    """The resolved config's SHA-256 as four 24-bit numbers (exact in float32, for the collectives)."""
    digest = hashlib.sha256(cfg.to_yaml().encode("utf-8")).digest()
    return [float(int.from_bytes(digest[i:i + 3], "big")) for i in range(0, 12, 3)]


def _same_config_everywhere(tf, strategy, cfg: Config, cluster: Cluster, replicas: int) -> None:
    """All-gather every worker's config hash and refuse to train if one differs."""
    mine = tf.constant([config_hash(cfg)], tf.float32)

    @tf.function
    def gather():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_gather(mine, axis=0))

    every = strategy.experimental_local_results(gather())[0].numpy()
    per_worker = replicas // len(cluster.tasks)
    differ = [i for i in range(len(cluster.tasks)) if not np.array_equal(every[i * per_worker], every[0])]
    if differ:
        job, index, _ = cluster.tasks[differ[0]]
        raise CnnlabError(
            f"{cluster.name()}: {cluster.name(job, index)} was started with a different config than the chief "
            f"{cluster.name(*cluster.tasks[0][:2])} (their resolved configs' hashes differ); start every worker "
            "with the same CONFIG and the same --set options."
        )


# --- the multi-worker training step --------------------------------------------------------

LOST = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError", "InternalError")


def fit_distributed(keras, model, cfg: Config, splits, callbacks: list, initial_epoch: int, dist: Distributed,
                    augment=None, verbose: int = 2, run_dir: Path | None = None,
                    class_weight: dict[int, float] | None = None) -> None:
    """Train compiled `model` for epochs initial_epoch..train.epochs under `dist.strategy`.

    Args:
        model: compiled in `dist.scope()`; its Keras loss object and optimizer are used.
        splits: prepared data; epoch e's order is the permutation of (seed, e), as one process's,
            and each step's global batch is cut into one contiguous part per replica.
        callbacks: Keras callbacks, called where `model.fit` calls them, with the same logs
            (loss, accuracy, val_loss, val_accuracy), equal on every worker.
        class_weight: each class id's weight in the training loss (train.class_weight), or None.
    """
    import tensorflow as tf

    strategy, replicas, batch = dist.strategy, dist.replicas, dist.global_batch
    count = len(splits.x_train)
    with dist.scope():  # the compiled loss, summed: the step divides by the global batch itself
        loss_sum = type(model.loss).from_config({**model.loss.get_config(), "reduction": "sum"})
    single = splits.y_train.ndim == 1 and model.output_shape[-1] == 1
    weighting = class_weighting(tf, class_weight, model.output_shape[-1])

    def hits(y, p):
        if single:
            right = tf.equal(tf.cast(p[:, 0] > 0.5, y.dtype), y)
        else:
            labels = tf.cast(y, tf.int64) if y.shape.rank == 1 else tf.argmax(y, axis=-1)
            right = tf.equal(tf.argmax(p, axis=-1), labels)
        return tf.reduce_sum(tf.cast(right, tf.float32))

    @tf.function(reduce_retracing=True)
    def train_step(x, y, samples):
        def replica(x, y):
            def forward():
                p = model(x, training=True)
                weights = None if weighting is None else weighting(y)
                loss = loss_sum(y, p, sample_weight=weights) / samples  # summed over replicas: the global mean
                if model.losses:  # the kernel regularizers' penalties, once per step in all
                    loss += tf.add_n(model.losses) / replicas
                return loss, hits(y, p)

            return gradient_update(tf, model, forward)

        loss, right = strategy.run(replica, args=(x, y))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", right, axis=None)

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        p = model(x, training=False)
        total = loss_sum(y, p)
        if model.losses:
            total += tf.add_n(model.losses) * tf.cast(tf.shape(p)[0], total.dtype)
        return total, hits(y, p)

    def distributed(parts):
        local = {}

        def values(ctx, which):
            r = ctx.replica_id_in_sync_group
            if r not in local:
                x = splits.x_train[parts[r]]
                local[r] = (augment(x, training=True) if augment is not None else x, splits.y_train[parts[r]])
            return tf.convert_to_tensor(local[r][which])

        return (strategy.experimental_distribute_values_from_function(lambda ctx: values(ctx, 0)),
                strategy.experimental_distribute_values_from_function(lambda ctx: values(ctx, 1)))

    at = {"epoch": initial_epoch}  # where a lost peer stopped the training

    def train_batch(epoch: int, index):
        at["epoch"] = epoch
        x, y = distributed(np.array_split(index, replicas))
        return train_step(x, y, tf.constant(len(index), tf.float32))

    def validate() -> dict:
        return _validation(eval_step, splits.x_val, splits.y_val, max(batch, 256)) if splits.x_val is not None else {}

    try:
        run_epochs(keras, model, callbacks, epochs=cfg.train.epochs, initial_epoch=initial_epoch, samples=count,
                   batch_size=batch, seed=cfg.seed, train_batch=train_batch, validate=validate, verbose=verbose)
    except tf.errors.OpError as exc:
        if type(exc).__name__ not in LOST:
            raise
        raise PeerLost(_lost_message(dist, exc, at["epoch"], run_dir)) from None


def _validation(eval_step, x, y, batch: int) -> dict:
    total, correct = 0.0, 0.0
    for start in range(0, len(x), batch):
        loss, right = eval_step(x[start:start + batch], y[start:start + batch])
        total, correct = total + float(loss), correct + float(right)
    return {"val_loss": total / len(x), "val_accuracy": correct / len(x)}


def _lost_message(dist: Distributed, exc: Exception, epoch: int, run_dir: Path | None) -> str:
    cluster = dist.cluster
    task = _TASK.search(str(exc))
    who = cluster.name(task[1], int(task[2])) if task and (task[1], int(task[2])) != (cluster.job, cluster.index) else "another worker"
    resume = (f"`cnnlab train --resume {run_dir}` with the same --workers / $TF_CONFIG on every worker"
              if cluster.chief else "`cnnlab train --resume RUN` on every worker (RUN: the chief's run directory)")
    cause = next((line.strip() for line in str(exc).splitlines() if _CAUSE.search(line)), "")
    cause = re.sub(r"^.*?(UNAVAILABLE|Unavailable): ", "", cause)[:140]
    return (f"{cluster.name()}: {who} stopped responding during epoch {epoch + 1} "
            f"({type(exc).__name__}{': ' + cause if cause else ''}); training stopped, every "
            f"finished epoch is kept; once all workers can run, continue with {resume}.")


def scope_of(dist: Distributed | None):
    """The strategy's scope, or nothing: models and optimizers made in it are mirrored."""
    return dist.scope() if dist is not None else nullcontext()

