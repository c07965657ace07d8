"""docs/RECIPES.md, generated from the recipe schema (:mod:`ftkit.recipe` and the models it nests), so it cannot
drift from it: ``python -m ftkit.recipe_reference > docs/RECIPES.md``. A test fails when the file is out of date."""

from __future__ import annotations

from typing import Annotated, Any

from ftkit.recipe import Recipe, _field_forms, _flow, _forms, _join, _model_in, _schema_fields
from ftkit.schedule import TRAIN_FORMS, ScheduleConfig

# One line per key, for docs/RECIPES.md. A field's own pydantic ``description`` wins; a test checks that every
# key of the schema has one here or there, and that nothing here names a key the schema lacks.
_MEANINGS: dict[str, str] = {
    "data.train": "a folder of class folders (with or without train/val/test split folders), a CSV of "
                  "path,label[,split], or an MNIST folder",
    "data.val": "a separate validation source (folder or CSV); default: the data's own val split, or one "
                "carved from train",
    "data.test": "a separate test source (folder or CSV); default: the data's own test split, or one carved "
                 "from train",
    "data.root": "the folder a CSV's relative paths start from (default: the CSV's own folder)",
    "data.val_fraction": "held out from train (stratified, seeded) when there is no val split and data.val is "
                         "not given; 0: no validation",
    "data.test_fraction": "likewise for test, when there is no test split",
    "data.image_size": "the size images are resized to (default: the backbone's input size)",
    "data.channels": "1 (grayscale, the luma) or 3 (RGB); default: the backbone's",
    "data.resize": "stretch to the size, centre-crop to its aspect first, or pad (letterbox)",
    "data.batch_size": "images per step, all replicas together",
    "data.classes": "keep only these classes, in this order",
    "data.samples_per_class": "train on a labelled sample of the training split, this many per class",
    "data.max_samples_per_class": "cap the training split at this many per class (a class with fewer is kept "
                                  "whole; smoke runs)",
    "data.eval_samples_per_class": "cap val and test the same way (smoke runs)",
    "data.oversample": "resample the training split to balanced classes each epoch",
    "data.seed": "seed of the carved splits and of the samples",
    "data.policy": "skip: bad files are left out and reported; strict: every image is decoded first and any "
                   "bad file or warning stops the run",
    "augment.backend": "which back end runs augmentation: keras (ops), albumentations, or none",
    "augment.seed": "the same seed gives the same augmented batches, each epoch different",
    "augment.ops": "keras back end: ops run in order, each {op_name: {params}} (see the ops below)",
    "augment.albumentations": "albumentations back end: its own serialised dict (A.to_dict(pipeline)), as YAML",
    "augment.mixup": "MixUp (Zhang et al. 2018), off when null",
    "augment.mixup.alpha": "the mixing weight is drawn from Beta(alpha, alpha)",
    "augment.cutmix": "CutMix (Yun et al. 2019), off when null",
    "augment.cutmix.alpha": "the pasted box's area fraction is 1 - Beta(alpha, alpha)",
    "augment.mix_prob": "the probability that a batch is mixed",
    "augment.switch_prob": "with both mixup and cutmix set, the probability that a mixed batch uses CutMix",
    "augment.parallel_reproducible": "refuse the ops that reproduce only in order (rand_augment, aug_mix, "
                                     "grid_mask)",
    "augment.crop_in_graph": "albumentations back end: a leading RandomResizedCrop runs in the graph; false "
                             "keeps it in albumentations, per image",
    "backbone.name": "a registered backbone (ftkit.list_backbones() names them)",
    "backbone.weights": "null, a named set (imagenet), a weights file, or a hashed URL",
    "backbone.init_from": "a run folder whose backbone weights initialise this one",
    "backbone.init_match": "exact: the same architecture, every weight copied; by_name: the layers whose "
                           "names and shapes agree",
    "head.pooling": "how the backbone's feature map becomes a vector",
    "head.dropout": "dropout rate before each dense layer of the head (0: none)",
    "head.hidden": "widths of dense layers before the classifier",
    "head.hidden_activation": "activation of those dense layers",
    "head.label_smoothing": "label smoothing of the cross-entropy loss",
    "head.aux_loss_weight": "weight of auxiliary classifiers' losses (GoogLeNet paper, Sec. 5)",
    "schedule.preset": "a named schedule (see Presets below); null when phases are written out",
    "schedule.epochs": "preset: epochs of each phase (the head phase's; the later ones' too unless "
                       "unfrozen_epochs is set)",
    "schedule.unfrozen_epochs": "preset: epochs of the unfrozen phases (default: epochs)",
    "schedule.lr": "preset: the head phase's learning rate",
    "schedule.unfrozen_lr": "preset: the unfrozen phases' rate (default: lr / 10)",
    "schedule.lr_schedule": "preset: the learning-rate curve of every phase",
    "schedule.warmup_epochs": "preset: linear warm-up at the start of every phase, in epochs",
    "schedule.lr_decay": "preset: per-group multiplier of the unfrozen phases, compounding towards the stem",
    "schedule.train_bn": "preset: BatchNorm layers of frozen groups keep training",
    "schedule.phases": "explicit phases, run in order (without a preset)",
    "schedule.phases[i].name": "shown in logs and history (default: phase<i>)",
    "schedule.phases[i].epochs": "epochs of this phase",
    "schedule.phases[i].train": "the layer groups that train in this phase (the rest are frozen)",
    "schedule.phases[i].lr": "learning rate (global, per step)",
    "schedule.phases[i].lr_schedule": "the learning-rate curve over the phase",
    "schedule.phases[i].warmup_epochs": "linear warm-up at the start of the phase, in epochs",
    "schedule.phases[i].step_gamma": "'step': the factor applied every step_epochs",
    "schedule.phases[i].train_bn": "BatchNorm layers of frozen groups keep training (and run in training mode)",
    "schedule.phases[i].lr_multipliers": "explicit rate multiplier per layer group (wins over lr_decay)",
    "train.seed": "seed of weights initialisation and training",
    "train.optimizer": "the optimizer",
    "train.momentum": "sgd only",
    "train.weight_decay": "adamw only",
    "train.precision": "Keras dtype policy",
    "train.jit_compile": "compile the train step with XLA",
    "train.class_weight": "per-class loss weights by class name; auto: balanced, from training counts",
    "train.feature_cache": "head-only phases without augmentation train on cached backbone features",
    "train.steps_per_epoch": "cap on steps per epoch (smoke runs); default: one pass over the data",
    "train.validation_steps": "cap on validation steps per epoch; default: the whole split",
    "train.monitor": "the metric that picks the best epoch and that early stopping watches",
    "train.final_model": "the epoch that becomes model.keras and is evaluated: the last, or the best monitor "
                         "value",
    "train.deterministic": "enable_op_determinism: bit-reproducible runs and resumes, slower on GPU",
    "train.strategy": "tf.distribute strategy; auto: multi_worker for a cluster, mirrored with several GPUs, "
                      "else default",
    "train.verbose": "Keras's progress output",
    "train.early_stopping": "end a phase once train.monitor has stalled; off when null",
    "train.early_stopping.patience": "epochs of the phase without an improvement before it ends",
    "train.early_stopping.min_delta": "an improvement beats the phase's best by more than this",
    "train.clip_norm": "rescale each update's gradient to this global norm when larger",
    "train.gradient_accumulation_steps": "average the gradients of this many batches per update",
    "evaluate.enabled": "score the final model and write a report per split after training",
    "evaluate.splits": "the splits evaluated (a split the data lacks is logged and skipped)",
    "evaluate.top_k": "the k of the top-k accuracies in the report; null: top-5 where the data has more than 5 classes",
    "evaluate.tta": "test-time augmentation of the final evaluation: 'flip' scores the mean of the class probabilities "
                    "of each image and its mirror image (twice the evaluation time; for images whose mirror image is "
                    "the same class, not digits or text); null: none",
}

_SECTION_NOTES: dict[str, str] = {
    "schedule": """\
### Presets

- `freeze`: one phase, the head only (`train: head`), `schedule.epochs` epochs at `schedule.lr`.
- `freeze_unfreeze`: that head phase, then one phase that trains everything (`train: all`) for
  `unfrozen_epochs` at `unfrozen_lr`, with `lr_decay`.
- `gradual`: the head phase, then one phase per backbone layer group, each unfreezing one more group from the
  top (`train: 1`, `2`, ...), for `unfrozen_epochs` at `unfrozen_lr`, with `lr_decay`.

### Phases

`schedule.phases` writes the phases out instead, each a mapping with the keys below.

A schedule takes a preset or explicit phases, not both. To switch a recipe with explicit phases to a preset
from the command line, empty the list: `--set 'schedule.phases=[]' --set schedule.preset=freeze_unfreeze`; the
other way: `--set schedule.preset=null --set 'schedule.phases=[{train: head, epochs: 2}, {train: all, lr: 1.0e-4}]'`.
A preset's phases are not a list to index: set its own keys (`--set schedule.unfrozen_lr=1e-4`).
""",
}

_TYPE_WORDS: dict[str, str] = {
    "augment.ops": "a list of {op_name: {params}}",
    "augment.albumentations": "a mapping (albumentations' format) or null",
    "schedule.phases": "a list of phases",
    "schedule.phases[i].train": TRAIN_FORMS,
}


def recipe_reference() -> str:
    """docs/RECIPES.md: every section and key of the recipe schema with its allowed values, default and meaning.

    Generated from the schema (``python -m ftkit.recipe_reference``) so it cannot drift from it.
    """
    from ftkit.augment.config import OPS

    out = ["# Recipe reference", "",
           "<!-- Generated by `python -m ftkit.recipe_reference > docs/RECIPES.md` from the schema in "
           "ftkit/recipe.py; a test fails when this file is out of date. -->", "",
           "A recipe is YAML with one section per pipeline stage. `data`, `backbone` and `schedule` are required; "
           "the other sections and every key with a default may be left out. Any key can be overridden on the "
           "command line with `--set section.key=value` (the value is read as YAML; quote the whole argument "
           "when it holds brackets or spaces: `--set 'data.image_size=[32, 32]'`). Learning rates are written "
           "`1.0e-3` or `0.001` (YAML 1.1 reads `1e-3` as a string; ftkit accepts it too).", ""]
    for section, field in Recipe.model_fields.items():
        model = _model_in(field.annotation)
        needed = "required" if field.is_required() else "optional"
        out += [f"## `{section}` ({needed})", ""]
        out += _reference_table(model, f"{section}.", skip=("phases",))
        if section in _SECTION_NOTES:
            out += ["", _SECTION_NOTES[section].rstrip()]
        if section == "schedule":
            out += ["", *_reference_table(ScheduleConfig.model_fields["phases"].annotation.__args__[0],
                                          "schedule.phases[i].")]
        if section == "augment":
            out += ["", "### Ops (`augment.ops`, keras back end)", "",
                    "Each item is `{op_name: {params}}` (or the bare name for the defaults); the params:", ""]
            for name, op in OPS.items():
                out += [f"#### `{name}`", "", " ".join(op.__doc__.split("\n\n")[0].split()), "",
                        *_reference_table(op, f"{name}.", meanings=False), ""]
            out.pop()
        out.append("")
    return "\n".join(out)


def _reference_table(model: Any, prefix: str, *, skip: tuple[str, ...] = (), meanings: bool = True) -> list[str]:
    """A Markdown table of ``model``'s fields (and of the models nested in them) under ``prefix``."""
    head = ["| key | allowed | default | meaning |", "| --- | --- | --- | --- |"]
    rows = []
    for path, field in _schema_fields(model, prefix):
        if any(path.startswith(f"{prefix}{name}[") for name in skip):
            continue
        meaning = field.description or _MEANINGS.get(path, "") if meanings else ""
        default = "required" if field.is_required() else f"`{_flow(field.get_default(call_default_factory=True))}`"
        key = path.removeprefix(prefix)
        rows.append(f"| `{key}` | {_cell(_type_words(path, field))} | {default} | {_cell(meaning)} |")
    if not meanings:
        head, rows = ["| param | allowed | default |", "| --- | --- | --- |"], [row.rsplit(" | ", 1)[0] + " |"
                                                                              for row in rows]
    return head + rows


def _type_words(path: str, field: Any) -> str:
    if path in _TYPE_WORDS:
        return _TYPE_WORDS[path]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return _join(_field_forms(path.split("."), annotation)) if "[i]" not in path else _join(_forms(annotation))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    print(recipe_reference(), end="")
