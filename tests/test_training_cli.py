"""From a finished run: export (keras / SavedModel / TFLite), init_from, lr_find, and the CLI commands."""

import json

import numpy as np
import pytest
from _training_helpers import QUIET, TINY, mnist_recipe, register_tiny


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


@pytest.fixture(scope="module")
def run(tiny_mnist_run):
    return tiny_mnist_run


def _raw_batch():
    return np.random.default_rng(1).integers(0, 256, (3, 16, 16, 1)).astype(np.uint8)


def test_export_keras_takes_uint8_and_returns_probabilities(run, tmp_path):
    import keras

    from ftkit.evaluate import load_model
    from ftkit.training import export_run

    path = export_run(run.path, format="keras", out=tmp_path)
    assert json.loads((tmp_path / "class_names.json").read_text()) == ["0", "1", "2"]
    exported = keras.saving.load_model(path, compile=False)
    assert exported.inputs[0].dtype == "uint8"
    images = _raw_batch()
    expected = load_model(run.path).model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(exported.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_a_saved_model_loads_in_plain_keras_after_importing_ftkit_layers(run, tmp_path):
    """A fresh interpreter: Keras refuses the model until ``import ftkit.layers`` registers ftkit's layer, then
    loads it and predicts as ftkit does."""
    import subprocess
    import sys

    from ftkit.evaluate import load_model

    images = _raw_batch().astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, sys
import keras, numpy as np
path = {str(run.path / "model.keras")!r}
try:
    keras.saving.load_model(path, compile=False)
    refused = ""
except Exception as error:
    refused = str(error)
import ftkit.layers
model = keras.saving.load_model(path, compile=False)
probs = model.predict(np.load({str(tmp_path / "images.npy")!r}), verbose=0)
print(json.dumps({{"refused": refused, "probs": probs.tolist()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Preprocess" in result["refused"]
    expected = load_model(run.path).model.predict(images, verbose=0)
    np.testing.assert_allclose(result["probs"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_export_tflite_matches_the_keras_model(run, tmp_path):
    import tensorflow as tf

    from ftkit.evaluate import load_model
    from ftkit.training import export_run

    path = export_run(run.path, format="tflite", out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_names.json", "model.tflite", "preprocessing.json"]
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], (3, 16, 16, 1))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], _raw_batch())
    interpreter.invoke()
    probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = load_model(run.path).model.predict(_raw_batch().astype(np.float32), verbose=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)


def test_load_model_builds_the_inference_model_of_a_checkpoint(run):
    """One epoch: the best and the last checkpoint are the final model, so all three predict alike."""
    from ftkit.evaluate import load_model

    images = _raw_batch().astype(np.float32)
    final = load_model(run.path)
    for checkpoint in ("best", "last"):
        loaded = load_model(run.path, checkpoint=checkpoint)
        assert loaded.source == str(run.path / "checkpoints" / f"{checkpoint}.keras")
        assert loaded.class_names == final.class_names and loaded.image_size == final.image_size == (16, 16)
        assert [layer.name for layer in loaded.model.layers] == [layer.name for layer in final.model.layers]
        np.testing.assert_allclose(loaded.model.predict(images, verbose=0), final.model.predict(images, verbose=0),
                                   rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"checkpoint must be one of \('best', 'last'\). Received: checkpoint='top'"):
        load_model(run.path, checkpoint="top")
    with pytest.raises(FileNotFoundError, match="a checkpoint of a run folder, not of a model file"):
        load_model(run.path / "model.keras", checkpoint="best")


@pytest.fixture(scope="module")
def best_run(shared_data, tmp_path_factory):
    """Two epochs whose second diverges (lr 5), so the best epoch is the first; model.keras is that epoch."""
    from ftkit.training import train

    phases = [{"train": "all", "epochs": 1, "lr": 0.01}, {"train": "all", "epochs": 1, "lr": 5.0}]
    recipe = mnist_recipe(str(shared_data / "mnist"), phases=phases, train={"final_model": "best"})
    lines = []
    result = train(recipe, out=tmp_path_factory.mktemp("best") / "run", log=lines.append)
    return result, lines


def test_final_model_best_and_exporting_either_checkpoint(best_run, tmp_path, capsys):
    import keras

    from ftkit.cli import main
    from ftkit.evaluate import load_model
    from ftkit.recipe import load_recipe
    from ftkit.training.runs import recipe_digest

    result, lines = best_run
    assert result.best_epoch == 0 and result.history[1]["val_loss"] > 10 * result.history[0]["val_loss"]
    assert ("train.final_model is best: model.keras and the final evaluation use epoch 1 (checkpoints/best.keras) "
            "instead of the last, epoch 2") in lines
    assert "probabilities; epoch 1, the best)" in lines[-1]
    images = _raw_batch().astype(np.float32)
    final = load_model(result.path).model.predict(images, verbose=0)
    best = load_model(result.path, checkpoint="best").model.predict(images, verbose=0)
    last = load_model(result.path, checkpoint="last").model.predict(images, verbose=0)
    np.testing.assert_allclose(final, best, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.model.predict(images, verbose=0), best, rtol=1e-6, atol=1e-7)  # evaluated
    assert np.abs(last - best).max() > 0.01
    checkpoint = keras.saving.load_model(result.path / "checkpoints" / "last.keras", compile=False)
    logits = checkpoint.predict(images, verbose=0)
    np.testing.assert_allclose(last, keras.ops.softmax(logits).numpy(), rtol=1e-5, atol=1e-6)

    assert main(["export", str(result.path), "--checkpoint", "last"]) == 0
    target = result.path / "export-last" / "model.keras"
    assert capsys.readouterr().out.strip() == str(target)
    exported = keras.saving.load_model(target, compile=False)
    np.testing.assert_allclose(exported.predict(_raw_batch(), verbose=0), last, rtol=1e-5, atol=1e-6)
    # which weights are saved at the end is not part of how the run trains: a run may resume either way
    saved = load_recipe(result.path / "recipe.yaml")
    edited = load_recipe({**saved.to_dict(), "train": {**saved.to_dict()["train"], "final_model": "last"}})
    assert recipe_digest(edited.to_dict()) == recipe_digest(saved.to_dict())


def test_export_rejects_unknown_format(run):
    from ftkit.training import export_run

    with pytest.raises(ValueError, match=r"format must be one of .*Received: format='onnx'"):
        export_run(run.path, format="onnx")


def test_init_from_loads_the_backbone_of_an_earlier_run(run, shared_data, tmp_path):
    import keras

    from ftkit.training import train

    recipe = mnist_recipe(str(shared_data / "mnist"), backbone=TINY, phases=[{"train": "head", "epochs": 1, "lr": 0.05}])
    recipe["backbone"]["init_from"] = str(run.path)
    recipe["data"]["classes"] = ["7", "8"]  # other classes: only the backbone carries over
    second = train(recipe, out=tmp_path / "second", **QUIET)
    before = keras.saving.load_model(run.path / "model.keras").get_layer("backbone").get_weights()
    after = keras.saving.load_model(second.path / "model.keras").get_layer("backbone").get_weights()
    assert len(before) == len(after) > 0
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # frozen all along: exactly the earlier run's backbone


def _tiny_deeper(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
                 classifier_activation="softmax", name=None):
    """tiny_bn_test with one more conv-BN-ReLU (``stage1b``), as VGG-19 is VGG-16 with more convolutions."""
    from _training_helpers import _conv_bn, _top
    from keras import layers

    from ftkit.backbones._builder import build_backbone

    def body(x):
        x = _conv_bn(x, 4, "stem")
        x = layers.MaxPooling2D(name="pool")(x)
        return _conv_bn(_conv_bn(x, 8, "stage1"), 8, "stage1b")

    return build_backbone(_tiny_deeper, body=body, head=_top, include_top=include_top, weights=weights,
                          input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                          classifier_activation=classifier_activation, name=name)


def test_init_match_by_name_copies_the_shared_layers_and_reports_the_rest(run, shared_data, tmp_path):
    import keras
    from _training_helpers import _META

    import ftkit
    from ftkit.training import train

    if "tiny_deeper_test" not in ftkit.list_backbones():
        ftkit.register_backbone("tiny_deeper_test", _tiny_deeper, **_META)
    recipe = mnist_recipe(str(shared_data / "mnist"), backbone="tiny_deeper_test",
                          phases=[{"train": "head", "epochs": 1, "lr": 0.05}])
    recipe["backbone"]["init_from"] = str(run.path)
    with pytest.raises(ValueError, match="init_match: by_name copies only"):
        train(recipe, out=tmp_path / "exact", **QUIET)
    recipe["backbone"]["init_match"] = "by_name"
    lines = []
    second = train(recipe, out=tmp_path / "by_name", log=lines.append)
    assert any("4 of 6 layers copied" in line and "left at their initial values: stage1b_conv, stage1b_bn" in line
               for line in lines), lines
    before = keras.saving.load_model(run.path / "model.keras").get_layer("backbone")
    after = keras.saving.load_model(second.path / "model.keras").get_layer("backbone")
    for name in ("stem_conv", "stem_bn", "stage1_conv", "stage1_bn"):  # frozen all along: the earlier weights
        for a, b in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # stage1b_conv kept its initial values: those of the same backbone built from the same seed, no run loaded.
    from ftkit.head import HeadConfig, build_model

    keras.utils.set_random_seed(recipe["train"]["seed"])
    initial = build_model("tiny_deeper_test", num_classes=3, image_shape=(16, 16, 1), head=HeadConfig(),
                          seed=recipe["train"]["seed"]).backbone.get_layer("stage1b_conv").get_weights()
    fresh = after.get_layer("stage1b_conv").get_weights()
    assert fresh[0].shape == (3, 3, 8, 8)
    for a, b in zip(initial, fresh, strict=True):
        np.testing.assert_array_equal(a, b)


def test_lr_find_writes_plot_and_suggests_a_rate(shared_data, tmp_path):
    from ftkit.training import lr_find
    from ftkit.training.lr_find import min_loss_lr, suggest_lr

    recipe = mnist_recipe(str(shared_data / "mnist"), phases=[{"train": "all", "epochs": 1, "lr": 0.01}])
    lines = []
    result = lr_find(recipe, out=tmp_path, steps=12, start_lr=1e-4, end_lr=1.0, log=lines.append)
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    assert 1e-4 <= result.suggestion <= 1.0
    assert len(result.lrs) == len(result.losses) and result.lrs == sorted(result.lrs)
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.suggestion == suggest_lr(result.lrs, result.losses)
    assert result.minimum == result.lrs[int(np.argmin(result.losses))] == min_loss_lr(result.lrs, result.losses)
    assert (f"lr_find: suggested learning rate {result.suggestion:.3g} (fastai's valley rule; for reference, the loss "
            f"is lowest at {result.minimum:.3g}, a tenth of which is {result.minimum / 10:.3g})") in lines[-1]


def _range_test_curve(*, cliff=False, warmup=False, noise=0.0):
    """A smoothed lr_find curve on the default grid (1e-7 to 10, 100 steps) shaped like the walkthrough's: flat,
    falling from 1e-3 (index 50), lowest at 2.72 (index 92), then diverging until 4x the minimum stops the
    test (index 96)."""
    lrs = np.logspace(-7, 1, 100)
    t = np.clip((np.arange(100) - 50) / 42, 0, 1)
    losses = 0.70 - 0.08 * t - (0.08 * t**8 if cliff else 0.08 * t)  # cliff: falls fastest just before the minimum
    if noise:
        losses[:50] += np.random.default_rng(0).uniform(-noise, noise, 50)
    if warmup:  # the bias-corrected average of the first batches
        losses[:4] = [0.80, 0.76, 0.73, 0.71]
    losses = np.concatenate([losses[:93], losses[92] * 1.5 ** np.arange(1, 5)])
    return lrs[:len(losses)], losses


@pytest.mark.parametrize(("shape", "old", "expected"), [
    ({"cliff": True}, 2.257, 0.04535),  # the walkthrough's case: the steepest point, just before divergence
    ({"warmup": True}, 1e-7, 0.04535),  # the smoothing's first steps were the steepest
    ({"noise": 0.005}, 6.43e-7, 0.01485),  # a noisy flat start was steeper than the descent
    ({"noise": 0.005, "cliff": True}, 2.257, 0.01789),
])
def test_lr_find_suggests_the_middle_of_the_longest_valley(shape, old, expected):
    from ftkit.training.lr_find import min_loss_lr, suggest_lr

    lrs, losses = _range_test_curve(**shape)
    steepest = lrs[np.argmin(np.gradient(losses, np.log10(lrs)))]  # the rule suggest_lr followed before
    assert steepest == pytest.approx(old, rel=1e-3)
    suggestion = suggest_lr(lrs, losses)
    assert suggestion == pytest.approx(expected, rel=1e-3)
    assert lrs[51] < suggestion < min_loss_lr(lrs, losses) / 10  # inside the descent, well before the minimum
    assert min_loss_lr(lrs, losses) == pytest.approx(2.7186, rel=1e-4)


def test_lr_find_valley_follows_fastai_on_small_curves():
    from ftkit.training.lr_find import longest_valley, suggest_lr

    assert longest_valley([3.0, 1.0, 2.0, 0.5, 0.4]) == (4, 4)  # a subsequence: the bump at 2.0 is stepped over
    assert longest_valley([1.0, 1.0, 1.0, 0.9, 0.8]) == (4, 3)  # flat points do not extend it
    lrs = np.logspace(-3, 0, 20)
    losses = np.r_[np.full(8, 1.0), np.linspace(0.9, 0.1, 9), [0.5, 1.0, 2.0]]
    # Left out: the first 2 and last 5 points; the valley is the last flat point and 7 falling ones (7..14), and
    # fastai's index is 14 - 8 + int(8 / 3) + int(8 / 6) = 9.
    assert suggest_lr(lrs, losses) == lrs[9]
    assert suggest_lr(lrs, np.linspace(1.0, 2.0, 20)) == lrs[2]  # no valley: the first point kept
    assert suggest_lr(lrs, np.r_[np.linspace(1.0, 0.5, 10), [np.nan] * 10]) == lrs[1]  # the curve ends at the NaN
    with pytest.raises(ValueError, match="at least 3 finite points to suggest a rate. Received: 2 points"):
        suggest_lr(lrs[:3], [1.0, 0.5, np.inf])


def test_cli_train_smoke_and_export(tmp_path, monkeypatch, repo_root, capsys):
    from ftkit.cli import main

    monkeypatch.chdir(repo_root)
    out = tmp_path / "cli_run"
    assert main(["train", "recipes/mnist_pretrain_0to4.yaml", "--smoke", "--out", str(out),
                 "--set", "train.seed=5", "--set", "evaluate.enabled=false"]) == 0
    printed = capsys.readouterr().out
    assert "ftkit train:" in printed  # the end-of-run summary
    # what --smoke changed, then where the run goes and what it trains on, before anything else
    smoke_line, rest = printed.split("\n", 1)
    assert smoke_line.startswith("smoke (a pipeline check in seconds, not the recipe's run): ")
    assert "train.steps_per_epoch null -> 2" in smoke_line
    assert rest.startswith(f"run folder: {out}\ndata: 5 classes from ")
    assert "seed: 5" in (out / "recipe.yaml").read_text()
    assert main(["export", str(out), "--format", "keras"]) == 0
    assert (out / "export" / "model.keras").is_file()
    assert main(["train", "recipes/mnist_pretrain_0to4.yaml", "--set", "schedule.phases[0].lrr=1"]) == 2
    assert "Did you mean 'lr'?" in capsys.readouterr().err


def test_jit_compile_reaches_the_compiled_model(shared_data, tmp_path):
    from ftkit.recipe import load_recipe
    from ftkit.training.engine import Trainer, plan_run
    from ftkit.training.runs import RunFolder

    recipe = mnist_recipe(str(shared_data / "mnist"), train={"jit_compile": True})
    trainer = Trainer(plan_run(load_recipe(recipe)), RunFolder(tmp_path), **QUIET)
    trainer.build()
    trainer.prepare_phase(trainer.plan.phases[0])
    assert trainer.trainer.jit_compile is True


@pytest.mark.slow
def test_mixed_precision_trains_and_restores_the_policy(shared_data, tmp_path):
    import keras

    from ftkit.training import train

    recipe = mnist_recipe(str(shared_data / "mnist"), phases=[{"train": "all", "epochs": 1, "lr": 0.01}],
                          train={"precision": "mixed_bfloat16", "steps_per_epoch": 2})
    result = train(recipe, out=tmp_path / "mp", **QUIET)
    assert keras.mixed_precision.global_policy().name == "float32"
    model = keras.saving.load_model(result.path / "model.keras")
    assert model.get_layer("backbone").get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    assert model.output.dtype == "float32"  # logits and probabilities stay float32
    assert float(result.history[0]["loss"]) > 0


def test_epochs_are_numbered_over_the_run(capsys):
    """The engine fits one epoch per call; Keras's own bar then printed "Epoch 2/2" for the run's epoch 2 of 20,
    and no header at all for its first."""
    from ftkit.training.engine import _run_progbar

    bar = _run_progbar(20)
    bar.set_params({"epochs": 2, "steps": 3, "verbose": 2})
    bar.on_epoch_begin(0)
    bar.on_epoch_begin(1)
    assert capsys.readouterr().out.splitlines() == ["Epoch 1/20", "Epoch 2/20"]


def test_data_lines_say_what_was_left_out(tmp_path, shared_data):
    from ftkit.data import scan
    from ftkit.training.engine import data_lines

    for name in ("ants", "bees"):
        (tmp_path / name).mkdir()
        for source in sorted((shared_data / "hymenoptera" / "train" / name).iterdir())[:4]:
            (tmp_path / name / source.name).write_bytes(source.read_bytes())
    (tmp_path / "wasps").mkdir()
    (tmp_path / "ants" / "zero.jpg").write_bytes(b"")
    (tmp_path / "bees" / "note.jpg").write_text("not an image")
    index = scan(tmp_path, val_fraction=0.25)
    lines = data_lines(index)
    assert lines[0] == f"data: 2 classes from {tmp_path}; images: train 6, val 2"
    assert lines[1].startswith("data: 2 file(s) skipped and left out (") and "ftkit_run.json" in lines[1]
    assert lines[2] == "data warning: class folder wasps has no usable image"
    index.record_skip(str(tmp_path / "ants" / "late.jpg"), "truncated or corrupt", "cut", "train")
    assert data_lines(index, since=2) == [
        "data: 1 file(s) skipped while decoding (1 truncated or corrupt); never modified, each listed with its "
        "reason in ftkit_run.json"]


def test_a_folder_without_a_checkpoint_is_not_offered_for_resuming(tmp_path, monkeypatch, repo_root):
    from ftkit.training import train

    monkeypatch.chdir(repo_root)
    (tmp_path / "recipe.yaml").write_text("# left by a run that failed before its first epoch ended\n")
    with pytest.raises(ValueError, match="has no checkpoint to resume.*delete the folder yourself"):
        train("recipes/mnist_pretrain_0to4.yaml", smoke=True, out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]  # untouched


def _few(shared_data, root, n):
    for name in ("ants", "bees"):
        (root / name).mkdir(parents=True)
        for source in sorted((shared_data / "hymenoptera" / "train" / name).iterdir())[:n]:
            (root / name / source.name).write_bytes(source.read_bytes())
    return root


def test_no_val_split_is_announced_and_a_file_lost_while_decoding_is_counted(shared_data, tmp_path):
    """8 + 8 good images and a truncated one (its header reads fine, so the scan keeps it): 3 steps counted
    at batch 8, 2 batches delivered. Keras's "ran out of data" then warned every epoch; the run record
    counted the lost file; with no val split, best.keras was picked on training accuracy under the name
    val_accuracy."""
    import warnings

    from ftkit.training import train

    root = _few(shared_data, tmp_path / "data", 8)
    whole = (root / "ants").iterdir().__next__().read_bytes()
    (root / "ants" / "zz_cut.jpg").write_bytes(whole[: len(whole) // 2])
    recipe = {"data": {"train": str(root), "val_fraction": 0.0, "image_size": [16, 16], "batch_size": 8},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 2, "lr": 0.01}]},
              "train": {"verbose": 0, "monitor": "val_accuracy"}, "evaluate": {"enabled": False}}
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(recipe, out=tmp_path / "run", log=lines.append)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert ("no val split: checkpoints/best.keras is chosen on the training accuracy, not val_accuracy (set "
            "data.val_fraction above 0 or data.val for validation data)") in lines
    assert "best accuracy (training; no val split): " in lines[-1]
    record = json.loads((result.path / "ftkit_run.json").read_text())["data"]
    assert record["counts"]["train"] == {"ants": 8, "bees": 8}
    assert [f["path"].rsplit("/", 1)[-1] for f in record["skipped_files"]] == ["zz_cut.jpg"]


def test_smoke_caps_classes_instead_of_refusing_small_ones(shared_data, tmp_path):
    from ftkit.recipe import load_recipe
    from ftkit.training.inputs import load_data

    root = _few(shared_data, tmp_path, 6)
    for extra in sorted((root / "bees").iterdir())[1:]:
        extra.unlink()  # our own copy: bees keeps one image
    recipe = load_recipe({"data": {"train": str(root), "image_size": [16, 16]}, "backbone": {"name": TINY},
                          "schedule": {"phases": [{"train": "all", "epochs": 1}]}}, smoke=True)
    data = load_data(recipe.data, image_shape=(16, 16, 1))
    assert data.index["train"].counts(2).tolist() == [4, 1]  # 5 ants after the default 20% val, capped at 4


def test_recipe_csv_root_and_a_val_folder_differing_by_case_or_spaces(shared_data, tmp_path):
    from ftkit.recipe import load_recipe
    from ftkit.training.inputs import load_data

    images = _few(shared_data, tmp_path / "images", 3)
    table = tmp_path / "tables" / "labels.csv"
    table.parent.mkdir()
    table.write_text("".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in sorted(images.rglob("*.jpg"))))
    base = {"backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1}]}}
    recipe = load_recipe({**base, "data": {"train": str(table), "root": str(images), "val_fraction": 0.0}})
    assert load_data(recipe.data, image_shape=(16, 16, 1)).index["train"].counts(2).tolist() == [3, 3]

    tree = _few(shared_data, tmp_path / "tree" / "train", 2).parent
    _few(shared_data, tmp_path / "tree" / "val", 1)
    (tree / "val" / "bees").rename(tree / "val" / "Bees ")
    recipe = load_recipe({**base, "data": {"train": str(tree)}})
    with pytest.raises(ValueError, match=r"Differing only by case or spaces: 'Bees ' -> 'bees'\."):
        load_data(recipe.data, image_shape=(16, 16, 1))


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    from ftkit.cli import main

    assert main(["train", "--resume", str(tmp_path), "--set", "schedule.phases[1].lr=0.1", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "--set, --out would be ignored" in err and "Received: --set --out with --resume" in err


def test_run_files_get_the_umask_mode_and_subpackages_load_on_use(tmp_path, monkeypatch):
    import subprocess
    import sys

    from ftkit.training import runs

    monkeypatch.setattr(runs, "_UMASK", 0o022)  # the umask read when ftkit.training.runs was imported
    runs.atomic_write_text(tmp_path / "state.json", "{}")
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 before
    code = "import ftkit, sys; ftkit.data.scan; ftkit.evaluate.evaluate_run; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the data and evaluate stages load without TensorFlow


def test_ctrl_c_names_the_folder_to_resume(tmp_path, monkeypatch, capsys):
    import ftkit.training
    from ftkit.cli import main

    def interrupted(*args, run_dir, **kwargs):
        error = KeyboardInterrupt()
        error.run_dir = run_dir
        raise error

    monkeypatch.setattr(ftkit.training, "train", lambda *a, **k: interrupted(run_dir=tmp_path / "run"))
    assert main(["train", "recipe.yaml"]) == 130
    assert capsys.readouterr().err.strip() == (f"ftkit train: interrupted. Continue from the last completed epoch with "
                                               f"`ftkit train --resume {tmp_path / 'run'}` (a run stopped before its "
                                               f"first epoch ended starts over).")
    monkeypatch.setattr(ftkit.training, "train", lambda *a, **k: interrupted(run_dir=None))  # nothing written yet
    assert main(["train", "recipe.yaml"]) == 130
    assert capsys.readouterr().err.strip() == "ftkit train: interrupted. Nothing was saved to resume."


def test_a_recipe_mistake_is_reported_before_tensorflow_loads(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "typo.yaml"
    recipe.write_text("data: {train: somewhere}\nbackbone: {name: lenet5}\nschedule: {preset: freeze}\n"
                      "train: {lrr: 1}\n")
    code = ("import sys; from ftkit.cli import main; rc = main(sys.argv[1:]); "
            "print('rc', rc, 'tensorflow' in sys.modules or 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "train", str(recipe)], capture_output=True, text=True,
                          timeout=120)
    assert "rc 2 False" in done.stdout, done.stdout + done.stderr
    assert "unknown key 'lrr' in train" in done.stderr
