"""Recipes: schema validation with useful messages, --set overrides, smoke mode, and every shipped recipe runs."""

from pathlib import Path

import pytest
import yaml

import ftkit
from ftkit.recipe import RecipeError, apply_overrides, load_recipe, parse_key, smoke_recipe
from ftkit.schedule import resolve_phases

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

BASE = {
    "data": {"train": "data/train"},
    "backbone": {"name": "lenet5"},
    "schedule": {"phases": [{"train": "head", "lr": 0.01}, {"train": "all", "lr": 0.001}]},
}


def _error(data) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(data)
    return str(info.value)


def test_unknown_key_names_place_and_closest_key():
    data = apply_overrides(BASE, {"schedule.phases[1].lrr": 0.1})
    message = _error(data)
    assert "unknown key 'lrr' in schedule.phases[1]" in message
    assert "Did you mean 'lr'?" in message
    assert "Received: schedule.phases[1].lrr" in message


def test_unknown_section_suggests_the_section():
    message = _error({**BASE, "trian": {"seed": 1}})
    assert "unknown key 'trian' in the top level. Did you mean 'train'?" in message


def test_wrong_range_and_type_say_what_was_received():
    message = _error(apply_overrides(BASE, ["schedule.phases[0].lr=-1", "data.batch_size=many"]))
    assert "schedule.phases[0].lr: Input should be greater than 0. Received: schedule.phases[0].lr=-1" in message
    assert "data.batch_size: Input should be a valid integer" in message and "'many'" in message
    assert "2 problem(s)" in message


def test_a_list_too_short_says_what_was_received():
    message = _error(apply_overrides(BASE, ["data.image_size=[64]"]))
    assert message.splitlines()[1] == "- data.image_size: too few items (item 2 is missing). Received: data.image_size=[64]"


def test_missing_section_is_named():
    message = _error({k: v for k, v in BASE.items() if k != "backbone"})
    assert "backbone: this key is required" in message


def test_overrides_parse_yaml_scalars_and_indices():
    data = apply_overrides(BASE, ["schedule.phases[1].epochs=3", "train.jit_compile=true", "data.classes=[a, b]",
                                  "backbone.weights=null"])
    assert data["schedule"]["phases"][1]["epochs"] == 3
    assert data["train"]["jit_compile"] is True
    assert data["data"]["classes"] == ["a", "b"]
    assert data["backbone"]["weights"] is None
    assert BASE["schedule"]["phases"][1].get("epochs") is None  # the input is not modified
    assert parse_key("a.b[2].c") == ["a", "b", 2, "c"]
    with pytest.raises(RecipeError, match="out of range"):
        apply_overrides(BASE, ["schedule.phases[5].lr=1"])
    with pytest.raises(RecipeError, match="section.key=value"):
        apply_overrides(BASE, ["schedule.phases"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(BASE)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert load_recipe(path) == recipe


def test_unsafe_yaml_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_smoke_shrinks_any_recipe():
    recipe = load_recipe(apply_overrides(BASE, ["schedule.phases[0].epochs=50", "backbone.weights=imagenet"]))
    small = smoke_recipe(recipe)
    assert [p.epochs for p in small.schedule.phases] == [1, 1]
    assert small.train.steps_per_epoch == 2 and small.data.max_samples_per_class == 4
    assert small.data.image_size == (32, 32) and small.backbone.weights is None


def test_smoke_says_every_value_it_changed_including_an_explicit_set():
    from ftkit.recipe import smoke_changes

    full = load_recipe(apply_overrides(BASE, ["data.image_size=[64,64]", "schedule.phases[0].epochs=50"]))
    changes = smoke_changes(full, smoke_recipe(full))
    assert "data.image_size [64, 64] -> [32, 32]" in changes
    assert "schedule.phases[0].epochs 50 -> 1" in changes
    assert "train.steps_per_epoch null -> 2" in changes
    assert not any(change.startswith("data.train ") for change in changes)  # unchanged values are not listed


def test_smoke_never_grows_the_image():
    # LeNet-5's 28x28 digits (its minimum is 28): smoke keeps them, so it runs the recipe's padding path.
    assert smoke_recipe(load_recipe(REPO / "recipes" / "lenet5_mnist.yaml")).data.image_size == (28, 28)
    assert smoke_recipe(load_recipe(apply_overrides(BASE, ["data.image_size=[30,40]"]))).data.image_size == (30, 32)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_starts_with_its_command_and_result(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# ftkit train recipes/{path.name}")
    assert any(line.startswith("# result:") for line in lines[:6])
    load_recipe(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    from ftkit.training import train

    monkeypatch.chdir(REPO)  # recipes name data relative to the repository root
    result = train(path, smoke=True, out=tmp_path / "run", log=lambda *a: None)
    assert (result.path / "model.keras").is_file()
    recipe = load_recipe(path, smoke=True)
    groups = [g for g in ftkit.backbone_info(recipe.backbone.name).group_names if g != "head"]
    assert len(result.history) == len(resolve_phases(recipe.schedule, groups))  # one epoch per phase
    assert all(float(row["loss"]) > 0 for row in result.history)


def _with_ops(*ops):
    return {**BASE, "augment": {"backend": "keras", "ops": [{"random_resized_crop": {}}, *ops]}}


def test_bad_op_parameter_names_index_op_and_received_value():
    message = _error(_with_ops({"flip": {"mode": "sideways"}}))
    assert "1 problem(s)" in message
    assert ("- augment.ops[1].flip.mode: must be one of 'horizontal', 'vertical' or 'horizontal_and_vertical'. "
            "Received: augment.ops[1].flip.mode='sideways'") in message
    assert "<missing>" not in message


def test_every_bad_op_is_reported_at_its_index():
    message = _error(_with_ops({"random_erasing": {"fill": 3}}, {"zoom": {"factor": 2}}))
    assert "2 problem(s)" in message
    assert "augment.ops[1].random_erasing.fill: must be one of 'zero', 'mean' or 'noise'. " \
           "Received: augment.ops[1].random_erasing.fill=3" in message
    assert "augment.ops[2].zoom.factor: Input should be less than 1. Received: augment.ops[2].zoom.factor=2" in message


def test_misspelt_op_is_one_line_with_a_suggestion_and_the_allowed_ops():
    message = _error(_with_ops({"flipp": {}}))
    assert message.splitlines()[1:] == [
        "- augment.ops[1]: unknown augmentation op 'flipp'. Did you mean 'flip'? Allowed: random_resized_crop, flip, "
        "rotation, zoom, translation, color_jitter, rand_augment, aug_mix, random_erasing, cutout, grid_mask. "
        "Received: op='flipp'"]
    assert message.count("Received:") == 1 and message.count("grid_mask") == 1
    assert "random_resized_crop': {}" not in message  # the ops list is not dumped


def test_bad_phase_train_is_one_line_with_the_allowed_forms():
    message = _error(apply_overrides(BASE, {"schedule.phases[0].train": "last_99"}))
    lines = message.splitlines()
    assert lines[0] == "The recipe has 1 problem(s):" and len(lines) == 2
    assert lines[1].startswith("- schedule.phases[0].train: `train` must be 'head'")
    for form in ("'head'", "'all'", "a number N >= 1", "a list of backbone layer group names"):
        assert form in lines[1]
    assert lines[1].endswith("Received: train='last_99'")
    assert "constrained-int" not in message and "<missing>" not in message


def test_union_errors_collapse_into_the_allowed_forms():
    message = _error(apply_overrides(BASE, {"train.class_weight": {"cat": "x"}, "train.optimizer": "adm"}))
    assert sorted(message.splitlines()[1:]) == [
        "- train.class_weight: must be 'auto', a mapping of strings to numbers or null. "
        "Received: train.class_weight={'cat': 'x'}",
        "- train.optimizer: must be one of 'adam', 'adamw' or 'sgd'. Did you mean 'adam'? "
        "Received: train.optimizer='adm'",
    ]


def test_validator_messages_are_not_followed_by_a_dump_of_the_section():
    message = _error(apply_overrides(BASE, {"schedule.preset": "freeze"}))
    assert "- schedule: schedule takes a preset or explicit phases, not both. Received: preset='freeze' and 2 phases" \
        in message
    assert message.count("Received:") == 1
