"""Distributed training: the cluster configuration, the per-replica split of each global batch, chief-only
writes, ``MirroredStrategy`` over two logical CPU devices, and ``MultiWorkerMirroredStrategy`` with two
worker processes on 127.0.0.1 (identical weights, equal to one device, a crash, a resume, a worker that
never joins).

Logical devices and clusters configure TensorFlow once per process, so those tests run in subprocesses
(``python -c`` or ``_distributed_worker.py``) with bounded timeouts, killed in ``finally``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _training_helpers import QUIET, TINY_AUX, mnist_recipe, register_tiny

from ftkit import distribute
from ftkit.recipe import RecipeError, load_recipe

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "_distributed_worker.py"


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()



def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(TESTS)}


# -- the cluster and the split: no TensorFlow cluster needed ------------------------------------------------


def test_cluster_config_from_a_worker_list(monkeypatch):
    # use_workers writes os.environ itself: setenv first so monkeypatch restores the variable afterwards
    # (a TF_CONFIG left behind turns `auto` into multi_worker for every later test in this process).
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.delenv("TF_CONFIG")
    config = distribute.use_workers("10.0.0.1:2222, 10.0.0.2:2222", 1)
    assert config == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    assert json.loads(os.environ["TF_CONFIG"]) == config
    assert distribute.resolve_name("auto") == "multi_worker"  # a cluster of 2 in TF_CONFIG
    for workers, index, match in ((["a:1", "b"], 0, "host:port"), (["a:1", "a:1"], 0, "distinct"),
                                  (["a:1"], 0, "at least 2"), (["a:1", "b:2"], 2, r"0\.\.1.*worker_index=2"),
                                  (["a:99999", "b:2"], 0, "1..65535")):
        with pytest.raises(ValueError, match=match):
            distribute.cluster_config(workers, index)
    with pytest.raises(ValueError, match=r"strategies are \['auto', 'default', 'mirrored', 'multi_worker'\]"):
        distribute.resolve_name("horovod")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.resolve_name("auto")


def test_auto_is_default_on_one_device_and_the_strategy_is_not_in_the_digest(monkeypatch, mnist):
    import tensorflow as tf

    from ftkit.training.runs import recipe_digest

    monkeypatch.delenv("TF_CONFIG", raising=False)
    several_gpus = len(tf.config.list_physical_devices("GPU")) > 1
    assert distribute.resolve_name("auto") == ("mirrored" if several_gpus else "default")
    recipe = load_recipe(mnist_recipe(mnist))
    assert recipe.train.strategy == "auto"
    other = load_recipe(mnist_recipe(mnist, train={"strategy": "multi_worker"}))
    assert recipe_digest(other.to_dict()) == recipe_digest(recipe.to_dict())  # a run may resume elsewhere
    with pytest.raises(RecipeError, match=r"train.strategy.*Received: train.strategy='tpu'"):
        load_recipe(mnist_recipe(mnist, train={"strategy": "tpu"}))


def test_each_global_batch_is_split_over_replicas_once():
    import tensorflow as tf

    from ftkit.training.replicas import pipeline_dataset, replica_chunks

    rows = np.arange(100, 123)  # 23 rows, global batch 8: steps of 8, 8 and 7
    chunks = replica_chunks(rows, global_batch=8, num_replicas=2, steps=3)
    assert [[len(c) for c in step] for step in chunks] == [[4, 4], [4, 4], [4, 3]]
    assert np.array_equal(np.concatenate([c for step in chunks for c in step]), rows)

    def make(r, size):
        return tf.data.Dataset.from_tensor_slices(r).batch(size)

    def batches(**kw):
        return [b.numpy().tolist() for b in pipeline_dataset(make, rows, global_batch=8, num_replicas=2, steps=3, **kw)]

    # one pipeline per worker (multi-worker) or one for both local replicas (mirrored, round-robin)
    assert batches(first_replica=0, local_replicas=1) == [[100, 101, 102, 103], [108, 109, 110, 111],
                                                          [116, 117, 118, 119]]
    assert batches(first_replica=1, local_replicas=1)[-1] == [120, 121, 122]
    assert batches(first_replica=0, local_replicas=2)[:3] == [[100, 101, 102, 103], [104, 105, 106, 107],
                                                              [108, 109, 110, 111]]
    capped = replica_chunks(rows, global_batch=8, num_replicas=2, steps=1)  # train.steps_per_epoch
    assert len(capped) == 1
    single = pipeline_dataset(make, rows[:1], global_batch=8, num_replicas=2, steps=1, first_replica=1,
                              local_replicas=1)
    assert list(single) == []  # fewer rows than replicas: tf.distribute feeds this replica an empty batch
    with pytest.raises(ValueError, match="split evenly over the 3 replicas. Received: batch_size=8"):
        replica_chunks(rows, global_batch=8, num_replicas=3, steps=3)


def test_a_read_only_run_folder_writes_nothing(tmp_path):
    from ftkit.training.runs import ResumeState, RunFolder

    folder = RunFolder(tmp_path / "run", writable=False).create()
    folder.write_meta({"a": 1})
    folder.append_history({"epoch": 0})
    folder.write_state(ResumeState("x", 0, 0, 0, 0, 0, None, None, ""))
    folder.truncate_history(0)
    assert folder.plot_curves() is None
    assert not (tmp_path / "run").exists()


# -- MirroredStrategy over two logical CPU devices ----------------------------------------------------------

_MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from _training_helpers import register_tiny
import ftkit
register_tiny()
job = json.loads(sys.argv[1])
out = {}
for name, recipe in job.get("refused", []):  # recipes a distributed strategy must refuse: their messages
    try:
        ftkit.train(recipe, out=f"{job['tmp']}/{name}", strategy="mirrored", log=lambda *a: None)
    except ValueError as exc:
        out[name] = str(exc)
for name, recipe, strategy in job["runs"]:
    result = ftkit.train(recipe, out=f"{job['tmp']}/{name}", strategy=strategy, log=lambda *a: None)
    np.savez(f"{job['tmp']}/{name}.npz", *result.model.get_weights())
    out[name] = {"history": result.history, "reports": sorted(result.reports)}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_matches_one_device(mnist, tmp_path):
    # No dropout (its masks differ per replica) and SGD, not Adam: Adam turns float noise in near-zero gradients (a conv bias before BatchNorm) into
    # full-size steps, so two correct runs would differ by ~lr in those weights.
    phases = [{"train": "head", "epochs": 1, "lr": 0.05},
              {"train": "all", "epochs": 2, "lr": 0.05, "lr_schedule": "cosine", "lr_decay": 0.5}]
    recipe = mnist_recipe(mnist, phases=phases, evaluate={"enabled": True, "splits": ["val"]},
                          train={"optimizer": "sgd", "momentum": 0.9, "class_weight": "auto", "seed": 3, "verbose": 0})
    # An auxiliary head (dropout 0.7 in it: random masks differ per replica, so no equality check here).
    mixed = mnist_recipe(mnist, backbone=TINY_AUX, phases=[{"train": "all", "epochs": 1, "lr": 0.05}],
                         augment={"mixup": {"alpha": 0.4}, "cutmix": {"alpha": 1.0}},
                         train={"optimizer": "sgd", "seed": 3, "verbose": 0})
    job = {"tmp": str(tmp_path), "runs": [["mirrored", recipe, "mirrored"], ["one", recipe, "default"],
                                          ["mixed", mixed, "mirrored"]]}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, json.dumps(job)], capture_output=True, text=True,
                          timeout=240, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    two, one = np.load(tmp_path / "mirrored.npz"), np.load(tmp_path / "one.npz")
    assert len(two.files) == len(one.files) > 10
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    losses = {name: [float(r["loss"]) for r in out[name]["history"]] for name in ("mirrored", "one")}
    assert losses["mirrored"] == pytest.approx(losses["one"], rel=1e-5)
    assert [r["cached"] for r in out["mirrored"]["history"]] == [1, 0, 0]  # the cache serves phase 1
    assert out["mirrored"]["reports"] == ["val"] and (tmp_path / "mirrored" / "report" / "val" / "report.json").is_file()
    mixed = out["mixed"]["history"][0]
    assert mixed["cached"] == 0 and np.isfinite(float(mixed["loss"])) and np.isfinite(float(mixed["val_loss"]))


_BATCHNORM = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
import ftkit
from ftkit.training import replicas

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {}

# Moments: channels whose mean dwarfs their spread, where E[x^2] - E[x]^2 cancels in float32.
rng = np.random.default_rng(0)
x = (rng.normal(size=(8, 4, 4, 3)) * [0.1, 1.0, 10.0] + [1000.0, -50.0, 0.0]).astype("float32")
layer = keras.layers.BatchNormalization()
layer.build(x.shape)
def moments():
    i = tf.distribute.get_replica_context().replica_id_in_sync_group
    return replicas._global_moments(layer, tf.constant(x)[i * 4:(i + 1) * 4], None)
with replicas.synchronized_batchnorm([layer]):
    per_replica = strategy.run(tf.function(moments))
out["moments"] = [[r.numpy().tolist() for r in strategy.experimental_local_results(m)] for m in per_replica]

# One SGD step of ResNet-18 (20 BatchNorm layers), 2 replicas of 4 images against one device's 8.
size, n = 64, 8
images = rng.normal(size=(n, size, size, 3)).astype("float32")
labels = np.eye(3, dtype="float32")[np.arange(n) % 3]
def build():
    keras.utils.set_random_seed(1)
    return ftkit.create_backbone("resnet18", include_top=True, weights=None, input_shape=(size, size, 3), classes=3,
                                 classifier_activation=None)
with strategy.scope():
    two, two_opt = build(), keras.optimizers.SGD(0.05)
one, one_opt = build(), keras.optimizers.SGD(0.05)
start = [w.copy() for w in two.get_weights()]
one.set_weights(start)
steps = replicas.DistributedSteps(strategy, two, two_opt, loss_weights=[1.0], label_smoothing=0.0)
halves = strategy.experimental_distribute_values_from_function(
    lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group * 4:][:4]) for a in (images, labels)))
bns = [l for l in two._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
with replicas.synchronized_batchnorm(bns):
    two_loss = float(steps.train_step(halves)[0])
@tf.function
def one_step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.categorical_crossentropy(labels, one(images, training=True), from_logits=True))
    one_opt.apply(tape.gradient(loss, one.trainable_variables), one.trainable_variables)
    return loss
one_loss = float(one_step())
trainable = {v.path for v in one.trainable_variables}
ratios = [float(np.max(np.abs(a - b)) / np.max(np.abs(a - s))) for a, b, s, v in
          zip(one.get_weights(), two.get_weights(), start, one.weights) if v.path in trainable and np.any(a != s)]
out.update(losses=[one_loss, two_loss], ratios=ratios, bns=len(bns),
           moving=float(max(np.max(np.abs(a - b)) for a, b in zip(one.get_weights(), two.get_weights()))))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_synchronized_batchnorm_takes_the_global_batch_moments_in_two_passes(tmp_path):
    """Under ``mirrored``, BatchNorm's moments are the global batch's, computed as one device computes them
    (the mean, then the squared deviations from it). Keras' own synchronized moments, ``E[x^2] - E[x]^2``, fail
    the first check (a channel of mean 1000 and spread 0.1 gets a variance off by far more than 0.1%); a
    per-replica BatchNorm fails the second (one step of ResNet-18 then differs from one device's by more than
    its update in some weights; with these moments by < 1e-4 of it)."""
    # Without oneDNN's kernels: on a CPU with AVX-512 they block a batch of 4 and one of 8 differently, and that
    # reassociation alone puts a few of ResNet-18's smallest updates up to 4.5% apart (ratios 0.010-0.045 on an
    # AMD EPYC with AVX-512, against at most 9e-5 with them off), which would hide what this test measures.
    proc = subprocess.run([sys.executable, "-c", _BATCHNORM], capture_output=True, text=True, timeout=240,
                          env={**_env(), "TF_ENABLE_ONEDNN_OPTS": "0"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 4, 4, 3)) * [0.1, 1.0, 10.0] + [1000.0, -50.0, 0.0]).astype("float32").astype(np.float64)
    (mean_a, mean_b), (var_a, var_b) = out["moments"]
    assert mean_a == mean_b and var_a == var_b  # every replica normalises with the same numbers
    np.testing.assert_allclose(mean_a, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var_a, x.var(axis=(0, 1, 2)), rtol=1e-3)
    assert out["bns"] == 20
    assert out["losses"][1] == pytest.approx(out["losses"][0], rel=1e-5)
    assert len(out["ratios"]) > 40 and max(out["ratios"]) < 0.01, sorted(out["ratios"])[-3:]


# -- MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 ---------------------------------------


def _freeze_unfreeze(mnist):
    recipe = mnist_recipe(mnist, train={"optimizer": "sgd", "momentum": 0.9, "class_weight": "auto", "seed": 3, "verbose": 0})
    recipe["schedule"] = {"preset": "freeze_unfreeze", "epochs": 1, "unfrozen_epochs": 2, "lr": 0.05}
    return recipe


def _start_workers(tmp_path: Path, tag: str, jobs: list[dict]) -> list[subprocess.Popen]:
    procs = []
    for index, job in enumerate(jobs):
        (tmp_path / f"w{index}").mkdir(exist_ok=True)
        path = tmp_path / f"{tag}{index}.json"
        path.write_text(json.dumps(job))
        with open(tmp_path / f"{tag}{index}.log", "w") as log:  # a file, not a pipe: nothing can block on it
            proc = subprocess.Popen([sys.executable, str(WORKER), str(path)], cwd=tmp_path / f"w{index}", env=_env(),
                                    stdout=log, stderr=subprocess.STDOUT)
        proc.log = tmp_path / f"{tag}{index}.log"
        procs.append(proc)
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, float]]:
    """Wait for every process (bounded); return (status, output, seconds since the call) per process."""
    start, results = time.monotonic(), []
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
            results.append((proc.returncode, proc.log.read_text(), time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # TensorFlow waiting on a peer ignores SIGTERM
                proc.wait()
    return results


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_workers_crash_resume_and_match_one_process(mnist, tmp_path):
    """Worker 1 crashes as epoch 3 begins (the second unfrozen epoch): worker 0 fails clearly within a bounded
    time, the chief's folder holds 2 epochs and the other worker wrote nothing; both resume and end with
    identical weights, equal to an uninterrupted single-process run."""
    from ftkit.training import train

    recipe = _freeze_unfreeze(mnist)  # evaluation off: the mirrored test covers the report
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    jobs = [{"workers": workers, "index": i, "recipe": recipe, "out": "run", "weights": str(tmp_path / f"a{i}.npz"),
             "die_at_epoch": 2 if i == 1 else None} for i in range(2)]
    procs = _start_workers(tmp_path, "a", jobs)
    try:
        crashed = procs[1].wait(timeout=240)
        died = time.monotonic()
    finally:
        results = _finish(procs, timeout=120)  # the survivor must give up on its own, well within this
    (chief, chief_out, _), survived = results[0], time.monotonic() - died
    assert crashed == 9
    assert chief == 1, chief_out[-3000:]
    assert survived < 90  # heartbeats: about 10-30 s on this machine
    assert "stopped answering during epoch 3" in chief_out and "--resume run" in chief_out
    assert "stopped sending heartbeats: /job:worker/replica:0/task:1)" in chief_out
    assert list((tmp_path / "w1").iterdir()) == []  # the non-chief wrote nothing
    run = tmp_path / "w0" / "run"
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch_in_phase"], state["global_epoch"]) == (1, 1, 2)

    # Shared storage stand-in: worker 1 reads its own copy, which it must leave untouched.
    shutil.copytree(run, tmp_path / "w1" / "run")
    before = _tree_digest(tmp_path / "w1" / "run")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    jobs = [{"workers": workers, "index": i, "resume": "run", "weights": str(tmp_path / f"b{i}.npz")} for i in range(2)]
    results = _finish(_start_workers(tmp_path, "b", jobs), timeout=240)
    assert [status for status, _, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert _tree_digest(tmp_path / "w1" / "run") == before
    w0, w1 = np.load(tmp_path / "b0.npz"), np.load(tmp_path / "b1.npz")
    assert all(np.array_equal(w0[k], w1[k]) for k in w0.files)  # identical on both workers
    for name in ("model.keras", "curves.png", "checkpoints/best.keras"):
        assert (run / name).is_file(), name
    assert [row.split(",")[2] for row in (run / "history.csv").read_text().splitlines()[1:]] == ["head", "all", "all"]

    single = train(recipe, out=tmp_path / "single", strategy="default", **QUIET)
    expected = single.model.get_weights()
    assert len(expected) == len(w0.files)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(w0[f"arr_{i}"], want, rtol=1e-4, atol=1e-5)
    history = (run / "history.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[4]) for r in history] == pytest.approx([float(r["loss"]) for r in single.history],
                                                                      rel=1e-5)


@pytest.mark.slow
def test_a_worker_that_never_joins_is_a_clear_error_in_bounded_time(mnist, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(mnist_recipe(mnist)))  # JSON is YAML
    ports = _free_ports(2)
    workers = ",".join(f"127.0.0.1:{port}" for port in ports)
    command = [sys.executable, "-m", "ftkit", "train", str(recipe), "--out", str(tmp_path / "run"),
               "--strategy", "multi_worker", "--workers", workers, "--worker-index", "0", "--join-timeout", "10"]
    start = time.monotonic()
    proc = subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -9, stderr[-2000:]  # SIGKILL from the join watchdog
    assert time.monotonic() - start < 90
    assert "did not form within 10 s" in stderr
    assert f"worker:1 (127.0.0.1:{ports[1]}) never joined" in stderr
    assert "Received: this task worker:0" in stderr


@pytest.mark.slow
@pytest.mark.slow
def test_two_workers_average_the_weights_as_one_process_does(mnist, tmp_path):
    """``train.ema`` under ``multi_worker``: each worker swaps its own copy of the average in and out (no
    communication), so both end with the same averaged model, the one a single process computes."""
    from ftkit.training import train

    recipe = mnist_recipe(mnist, phases=[{"train": "all", "epochs": 2, "lr": 0.05}],
                          # SGD, as the other comparisons here: Adam divides each gradient by its own running
                          # scale, so a conv bias before BatchNorm (true gradient 0) moves by the learning rate on
                          # the sign of float noise, and those weights differ between any two runs.
                          train={"ema": {"momentum": 0.9}, "seed": 3, "verbose": 0, "optimizer": "sgd",
                                 "momentum": 0.9})
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    jobs = [{"workers": workers, "index": i, "recipe": recipe, "out": "run", "weights": str(tmp_path / f"e{i}.npz")}
            for i in range(2)]
    results = _finish(_start_workers(tmp_path, "e", jobs), timeout=240)
    assert [status for status, _, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    w0, w1 = np.load(tmp_path / "e0.npz"), np.load(tmp_path / "e1.npz")
    assert all(np.array_equal(w0[k], w1[k]) for k in w0.files)  # the same model on both workers
    single = train(recipe, out=tmp_path / "single", strategy="default", **QUIET)
    expected = single.model.get_weights()
    assert len(expected) == len(w0.files)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(w0[f"arr_{i}"], want, rtol=1e-4, atol=1e-5)
    history = (tmp_path / "w0" / "run" / "history.csv").read_text().splitlines()
    column = history[0].split(",").index("val_loss")
    assert [float(r.split(",")[column]) for r in history[1:]] == pytest.approx(
        [float(r["val_loss"]) for r in single.history], rel=1e-4)


def test_two_workers_both_end_with_the_best_epoch_under_final_model_best(mnist, tmp_path):
    """``train.final_model: best`` on two workers whose second epoch diverges: the chief restores best.keras, the
    other worker (which writes no checkpoint) its copy in memory, so both return the best epoch's model."""
    from ftkit.evaluate import load_model

    phases = [{"train": "all", "epochs": 1, "lr": 0.01}, {"train": "all", "epochs": 1, "lr": 5.0}]
    recipe = mnist_recipe(mnist, phases=phases, train={"final_model": "best", "seed": 3, "verbose": 0})
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    jobs = [{"workers": workers, "index": i, "recipe": recipe, "out": "run", "weights": str(tmp_path / f"c{i}.npz")}
            for i in range(2)]
    results = _finish(_start_workers(tmp_path, "c", jobs), timeout=240)
    assert [status for status, _, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert "train.final_model is best: model.keras and the final evaluation use epoch 1" in results[0][1]
    assert list((tmp_path / "w1").iterdir()) == []
    run = tmp_path / "w0" / "run"
    w0, w1 = np.load(tmp_path / "c0.npz"), np.load(tmp_path / "c1.npz")
    best = load_model(run, checkpoint="best").model.get_weights()
    last = load_model(run, checkpoint="last").model.get_weights()
    assert len(w0.files) == len(w1.files) == len(best)
    for i, want in enumerate(best):
        assert np.array_equal(w0[f"arr_{i}"], w1[f"arr_{i}"])  # the same model on both workers
        np.testing.assert_allclose(w1[f"arr_{i}"], want, rtol=1e-6, atol=1e-7)
    assert max(float(np.abs(a - b).max()) for a, b in zip(last, best, strict=True)) > 0.01  # best is not last
