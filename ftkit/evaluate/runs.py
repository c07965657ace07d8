"""Load what evaluate / predict need from a run folder or a ``.keras`` file: the model and how to feed it.

The contract (docs/ARCHITECTURE.md, "Run folder"): ``RUN/model.keras`` takes raw 0..255 images and returns
class probabilities; ``RUN/ftkit_run.json`` holds ``class_names``, ``image_size``, ``channels``, ``resize``.
``RUN/checkpoints/{best,last}.keras`` are training models (logits out); ``load_model(run, checkpoint="best")``
turns one into an inference model the way training turns its final model into ``model.keras``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUN_META = "ftkit_run.json"
INFERENCE_MODEL = "model.keras"
REPORT_DIR = "report"
CHECKPOINTS = ("best", "last")  # RUN/checkpoints/<name>.keras, as ftkit.training writes them
# Test-time augmentation: each mode and what the report says of it. "flip": an image's class probabilities are
# the mean of the model's for the image and for its horizontal mirror image (fastai's ``learn.tta`` without the
# random crops), one extra forward pass per batch (ftkit.evaluate.predict._predict_batch). Defined here, not there,
# because the CLI builds its parser from them and ftkit.evaluate.predict imports scikit-learn (seconds).
TTA_MODES = {"flip": "horizontal flip, 2 views averaged"}
TTA_HELP = ("'flip' averages the class probabilities of each image and of its mirror image (left and right "
            "swapped), which doubles the inference time; it suits images whose mirror image is the same class "
            "(photos of objects, animals, scenes), not digits or text")


def check_tta(tta: str | None) -> str | None:
    """``tta`` if it names a test-time augmentation (:data:`TTA_MODES`) or is ``None``; an error otherwise."""
    if tta is not None and (not isinstance(tta, str) or tta not in TTA_MODES):
        raise ValueError(f"tta must be None (no test-time augmentation) or one of {list(TTA_MODES)}: {TTA_HELP}. "
                         f"Received: tta={tta!r}")
    return tta


def describe_tta(tta: str | None) -> str:
    """The report's line on test-time augmentation."""
    return f"test-time augmentation: {TTA_MODES[tta] if tta else 'none'}"


@dataclass
class LoadedModel:
    """An inference model plus the metadata saved beside it at training time."""

    model: object
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    resize: str
    source: str
    run_dir: Path


def read_run_meta(path: str | Path) -> dict:
    """Parse and check ``ftkit_run.json`` (class names, image size, channels, resize)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Received: file={str(path)!r}") from error
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: class_names must be a list of at least 2 strings. Received: class_names={names!r}")
    size = meta.get("image_size")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{path}: image_size must be [H, W] positive integers. Received: image_size={size!r}")
    if meta.get("channels", 3) not in (1, 3):
        raise ValueError(f"{path}: channels must be 1 or 3. Received: channels={meta.get('channels')!r}")
    return meta


def _find_meta(model_path: Path) -> Path:
    # A checkpoint (RUN/checkpoints/best.keras) finds the run's metadata one folder up.
    for folder in (model_path.parent, model_path.parent.parent):
        if (folder / RUN_META).is_file():
            return folder / RUN_META
    raise FileNotFoundError(
        f"No {RUN_META} next to {model_path} or in its parent folder; it holds the class names saved at "
        f"training time. Pass a run folder written by `ftkit train`. Received: model={str(model_path)!r}"
    )


def resolve_model_path(model_or_run: str | Path) -> tuple[Path, Path, Path]:
    """``(model file, metadata file, run folder)`` for a run folder or a ``.keras`` file."""
    path = Path(model_or_run)
    if path.is_dir():
        model_path = path / INFERENCE_MODEL
        if not model_path.is_file():
            raise FileNotFoundError(
                f"Run folder has no {INFERENCE_MODEL} (the exported inference model). Received: run={str(path)!r}"
            )
        if not (path / RUN_META).is_file():
            raise FileNotFoundError(f"Run folder has no {RUN_META}. Received: run={str(path)!r}")
        return model_path, path / RUN_META, path
    if path.is_file() and path.suffix == ".keras":
        meta = _find_meta(path)
        return path, meta, meta.parent
    raise FileNotFoundError(
        f"Expected a run folder or a .keras model file. Received: model_or_run={str(model_or_run)!r}"
    )


def checkpoint_path(run: str | Path, checkpoint: str) -> Path:
    """``RUN/checkpoints/<checkpoint>.keras``, checked: ``checkpoint`` is ``"best"`` (the epoch of the best
    ``train.monitor`` value) or ``"last"`` (the last completed epoch)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}. Received: checkpoint={checkpoint!r}")
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"checkpoint={checkpoint!r} picks a checkpoint of a run folder, not of a model file. "
                                f"Received: model_or_run={str(run)!r}")
    path = run / "checkpoints" / f"{checkpoint}.keras"
    if not path.is_file():
        raise FileNotFoundError(f"The run has no checkpoints/{path.name}: it stopped before its first epoch ended, "
                                f"or is not a run folder written by `ftkit train`. Received: run={str(run)!r}")
    return path


def resolve_paths(model_or_run: str | Path, checkpoint: str | None = None) -> tuple[Path, Path, Path]:
    """``(model file, metadata file, run folder)`` of what :func:`load_model` loads, checked without TensorFlow."""
    if checkpoint is None:
        return resolve_model_path(model_or_run)
    model_path = checkpoint_path(model_or_run, checkpoint)
    run_dir = Path(model_or_run)
    if not (run_dir / RUN_META).is_file():
        raise FileNotFoundError(f"Run folder has no {RUN_META}. Received: run={str(run_dir)!r}")
    return model_path, run_dir / RUN_META, run_dir


def load_model(model_or_run: str | Path, *, checkpoint: str | None = None) -> LoadedModel:
    """Load the Keras model and its run metadata; the paths and metadata are checked before TensorFlow is
    imported (seconds), so a wrong path fails at once.

    ``checkpoint=None``: the run's ``model.keras`` (or the ``.keras`` file given). ``"best"`` or ``"last"``: that
    training checkpoint of a run folder, made an inference model (raw images in, probabilities out, auxiliary
    heads left out) by the function that makes ``model.keras`` at the end of training.
    """
    model_path, meta_path, run_dir = resolve_paths(model_or_run, checkpoint)
    meta = read_run_meta(meta_path)
    import keras

    import ftkit.backbones._preprocessing  # noqa: F401  registers the Preprocess layer a run's model contains

    model = keras.saving.load_model(model_path, compile=False)
    if checkpoint is not None:
        from ftkit.head import inference_model

        model = inference_model(model)
    return LoadedModel(
        model=model,
        class_names=list(meta["class_names"]),
        image_size=tuple(meta["image_size"]),
        channels=int(meta.get("channels", 3)),
        resize=meta.get("resize", "stretch"),
        source=str(model_path),
        run_dir=run_dir,
    )
