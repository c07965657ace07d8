"""``tf.distribute`` strategies for training: which one to use, the multi-worker cluster, and who is chief.

``strategy`` (recipe ``train.strategy``, ``ftkit train --strategy``) is one of:

- ``default``: one device, TensorFlow's default strategy (``model.fit``);
- ``mirrored``: ``MirroredStrategy`` over every visible GPU (over the logical CPU devices when there is
  no GPU: one unless the process configured more, as the tests do);
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the cluster in ``TF_CONFIG``, written by
  :func:`use_workers` (``--workers host:port,... --worker-index N``), or read from Slurm's environment
  with ``cluster="slurm"`` (``SlurmClusterResolver``);
- ``auto``: ``multi_worker`` when a cluster of several tasks is configured, ``mirrored`` when several GPUs
  are visible, ``default`` otherwise.

A cluster that never forms is a hang inside TensorFlow's C++ start-up (no Python exception, and the
process ignores SIGTERM while it waits), so :func:`make_strategy` arms a watchdog: when the strategy is not
up after ``join_timeout`` seconds it prints which workers did not answer and kills the process (SIGKILL,
exit status 137 in a shell). A worker that dies later is detected by the coordination service's heartbeats;
the training loop turns that into :class:`WorkerLostError`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
CLUSTERS = ("tf_config", "slurm")
DEFAULT_JOIN_TIMEOUT = 300.0

_STRATEGY_CACHE: dict[str, Any] = {}


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run stopped answering (crashed, killed or unreachable)."""


# -- the cluster ------------------------------------------------------------------------------------------


def cluster_config(workers: list[str] | str, worker_index: int) -> dict[str, Any]:
    """The ``TF_CONFIG`` dict for ``workers`` (``"host:port"`` each, the chief first) and this worker's index."""
    if isinstance(workers, str):
        workers = [w.strip() for w in workers.split(",") if w.strip()]
    for address in workers:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Each worker must be host:port with a port in 1..65535. Received: workers={workers}")
    if len(set(workers)) != len(workers):
        raise ValueError(f"The worker addresses must be distinct. Received: workers={workers}")
    if len(workers) < 2:
        raise ValueError(f"A multi-worker cluster needs at least 2 workers. Received: workers={workers}")
    if not 0 <= worker_index < len(workers):
        raise ValueError(f"worker_index must be in 0..{len(workers) - 1} for {len(workers)} workers. "
                         f"Received: worker_index={worker_index}")
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": int(worker_index)}}


def use_workers(workers: list[str] | str, worker_index: int) -> dict[str, Any]:
    """Write ``TF_CONFIG`` for this process (before any strategy is made); return the config."""
    config = cluster_config(workers, worker_index)
    os.environ["TF_CONFIG"] = json.dumps(config)
    return config


def tf_config() -> dict[str, Any]:
    """``TF_CONFIG`` parsed, ``{}`` when unset."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}). Received: TF_CONFIG={text[:200]!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'. Received: TF_CONFIG={text[:200]!r}")
    return config


def cluster_size(config: dict[str, Any]) -> int:
    """How many chief and worker tasks a ``TF_CONFIG`` dict describes."""
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


# -- strategies -------------------------------------------------------------------------------------------


def resolve_name(name: str, *, cluster: str = "tf_config") -> str:
    """``auto`` made concrete (one of ``default``, ``mirrored``, ``multi_worker``); other names checked."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy; the strategies are {list(STRATEGIES)}. Received: strategy={name!r}")
    if cluster not in CLUSTERS:
        raise ValueError(f"Unknown cluster source; allowed: {list(CLUSTERS)}. Received: cluster={cluster!r}")
    if name != "auto":
        return name
    if cluster == "slurm" or cluster_size(tf_config()) > 1:
        return "multi_worker"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"


def make_strategy(name: str = "auto", *, cluster: str = "tf_config", join_timeout: float = DEFAULT_JOIN_TIMEOUT,
                  collective_timeout: float | None = None):
    """The strategy called ``name`` (see the module docstring); made once per process and reused.

    Make it before TensorFlow runs anything else: ``MultiWorkerMirroredStrategy`` configures the runtime at
    start-up. ``collective_timeout`` bounds each all-reduce (off by default: while the chief writes a
    checkpoint or evaluates, the other workers wait at their next all-reduce, legitimately, for as long as
    that takes; dead workers are caught by heartbeats instead).
    """
    import tensorflow as tf

    resolved = resolve_name(name, cluster=cluster)
    key = f"{resolved}:{cluster}" if resolved == "multi_worker" else resolved
    if key in _STRATEGY_CACHE:
        return _STRATEGY_CACHE[key]
    if resolved == "default":
        strategy = tf.distribute.get_strategy()
    elif resolved == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = _multi_worker(cluster=cluster, join_timeout=join_timeout, collective_timeout=collective_timeout)
    _STRATEGY_CACHE[key] = strategy
    return strategy


def _multi_worker(*, cluster: str, join_timeout: float, collective_timeout: float | None):
    import tensorflow as tf

    if any(name.startswith("multi_worker") for name in _STRATEGY_CACHE):
        raise ValueError("A process can join one multi-worker cluster only. Received: a second cluster source "
                         f"{cluster!r}")
    if cluster == "slurm":
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
    else:
        if cluster_size(tf_config()) < 2:
            raise ValueError("strategy multi_worker needs a cluster of at least 2 workers in TF_CONFIG (or "
                             "--workers host:port,host:port --worker-index N, or --cluster slurm). "
                             f"Received: TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}")
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
    watchdog = _JoinWatchdog(resolver, join_timeout)
    watchdog.start()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    finally:
        watchdog.cancel()


class _JoinWatchdog:
    """Kills this process with a clear message when the cluster has not formed after ``timeout`` seconds.

    TensorFlow waits for every task inside one C++ call that holds the GIL, with no deadline: no Python
    thread or signal handler of this process runs until it returns. So the watchdog is a small separate
    process: it waits on a pipe from this one; if the pipe is not closed within ``timeout`` (the strategy is
    up, or this process died), it names the workers that do not answer and sends SIGKILL.
    """

    def __init__(self, resolver, timeout: float):
        self.resolver, self.timeout = resolver, float(timeout)
        self.process = None

    def start(self) -> None:
        import subprocess

        if self.timeout <= 0:
            return
        payload = {"pid": os.getpid(), "timeout": self.timeout, "cluster": self.resolver.cluster_spec().as_dict(),
                   "me": f"{self.resolver.task_type}:{self.resolver.task_id}"}
        self.process = subprocess.Popen([sys.executable, "-c", _WATCHDOG_SOURCE, json.dumps(payload)],
                                        stdin=subprocess.PIPE)

    def cancel(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait()


# Runs in the watchdog process: standard library only, so it starts in milliseconds.
_WATCHDOG_SOURCE = r"""
import json, os, select, signal, socket, sys
job = json.loads(sys.argv[1])
if select.select([sys.stdin], [], [], job["timeout"])[0]:
    sys.exit(0)
def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except OSError:
        return False
silent = [f"{job_name}:{i} ({address})" for job_name, addresses in job["cluster"].items()
          for i, address in enumerate(addresses) if f"{job_name}:{i}" != job["me"] and not answers(address)]
sys.stderr.write(
    f"\nftkit train: error: the multi-worker cluster did not form within {job['timeout']:.0f} s; "
    f"{', '.join(silent) or 'some worker'} never joined (no answer on its port). Start every worker with the same "
    f"worker list and its own index, check the addresses and firewalls, or raise --join-timeout. This process "
    f"is killed (SIGKILL): TensorFlow cannot be interrupted while it waits. "
    f"Received: this task {job['me']}, cluster={job['cluster']}\n")
sys.stderr.flush()
os.kill(job["pid"], signal.SIGKILL)
"""


def is_distributed(strategy) -> bool:
    """True for every strategy but TensorFlow's default one."""
    import tensorflow as tf

    return type(strategy) is not type(tf.distribute.get_strategy())  # noqa: E721  (the class is private)


def task_of(strategy) -> tuple[str, int, int]:
    """``(task type, task index, number of workers)``; ``("local", 0, 1)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = sum(len(spec.get(job, [])) for job in ("chief", "worker"))
    if workers < 2:
        return "local", 0, 1
    return resolver.task_type, int(resolver.task_id), workers


def check_cluster_is_used(strategy) -> None:
    """Refuse a ``TF_CONFIG`` cluster (``--workers`` writes one) that ``strategy`` would ignore: ``default`` and
    ``mirrored`` train on one machine, so every process of the cluster would train its own model, each as its
    own chief, and all of them would write the same run folder."""
    config = tf_config()
    size = cluster_size(config)
    if size > 1 and task_of(strategy)[2] < 2:
        raise ValueError(
            f"TF_CONFIG (written by --workers, or set in the environment) describes a cluster of {size} workers, but "
            f"the strategy trains on this machine alone: each worker would train by itself and write the same run "
            f"folder. Use --strategy multi_worker (or auto), or unset TF_CONFIG for a one-machine run. "
            f"Received: {describe(strategy)}, TF_CONFIG={json.dumps(config)[:200]}"
        )


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: the ``chief`` task, else worker 0, else the only one."""
    task_type, task_id, _ = task_of(strategy)
    if task_type in ("local", "chief"):
        return True
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in spec


def describe(strategy) -> str:
    """One audit line: the strategy, its replicas and this process's place in the cluster."""
    task_type, task_id, workers = task_of(strategy)
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy; the default one's is private.
    names = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
             "_DefaultDistributionStrategy": "default strategy"}
    name = names.get(type(strategy).__name__, type(strategy).__name__)
    where = f", {task_type} {task_id} of {workers} workers" if workers > 1 else ""
    role = " (chief: writes the run folder)" if workers > 1 and is_chief(strategy) else ""
    alone = ""
    if name == "MirroredStrategy" and strategy.num_replicas_in_sync == 1:
        alone = (" (one visible device, no second GPU: this run computes what --strategy default computes, "
                 "with the distributed step)")
    return f"strategy: {name}, {strategy.num_replicas_in_sync} replica(s){where}{role}{alone}"
