"""Recipe values keep their kind (no true -> 1, 1 -> True, "3" -> 3), class names are strings with a hint on
how to quote them, and --set into a preset's phases names the preset's own key."""

from pathlib import Path

import pytest

from ftkit.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"  # schedule: preset freeze_unfreeze
LENET = REPO / "recipes" / "lenet5_mnist.yaml"  # schedule: one explicit phase


def _lines(recipe: Path, *overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, overrides=list(overrides))
    return str(info.value).splitlines()


@pytest.mark.parametrize(("override", "expected"), [
    ("train.verbose=true",
     "- train.verbose: must be 0, 1 or 2, not true/false (it would silently become 1). Received: train.verbose=True"),
    ("train.jit_compile=1", "- train.jit_compile: must be true or false, not an integer (it would silently become "
                            "True). Received: train.jit_compile=1"),
    ("train.jit_compile='1'", "- train.jit_compile: must be true or false, not a string (it would silently become "
                              "True). Received: train.jit_compile='1'"),
    ("data.oversample='true'", "- data.oversample: must be true or false, not a string (it would silently become "
                               "True). Received: data.oversample='true'"),
    ("schedule.epochs=2.0", "- schedule.epochs: must be an integer > 0, not a decimal number (it would silently "
                            "become 2). Received: schedule.epochs=2.0"),
    ("schedule.epochs='3'", "- schedule.epochs: must be an integer > 0, not a string (it would silently become 3). "
                            "Received: schedule.epochs='3'"),
    ("schedule.lr=true", "- schedule.lr: must be a number > 0, not true/false (it would silently become 1.0). "
                         "Received: schedule.lr=True"),
    ("data.image_size=[true, 28]", "- data.image_size[0]: must be an integer > 0, not true/false (it would silently "
                                   "become 1). Received: data.image_size[0]=True"),
    ("evaluate.top_k=[true]", "- evaluate.top_k[0]: must be an integer > 0, not true/false (it would silently "
                              "become 1). Received: evaluate.top_k[0]=True"),
])
def test_a_value_of_another_kind_is_refused_not_coerced(override, expected):
    assert _lines(QUICKSTART, override) == ["The recipe has 1 problem(s):", expected]


def test_phase_train_true_is_not_read_as_one_group():
    lines = _lines(LENET, "schedule.phases[0].train=true")
    assert lines[1] == ("- schedule.phases[0].train: must be 'head', 'all', an integer > 0 or a list of strings, "
                        "not true/false (it would silently become 1). Received: schedule.phases[0].train=True")


def test_augment_op_parameters_keep_their_kind_too():
    lines = _lines(QUICKSTART, "augment.backend=keras",
                   "augment.ops=[{flip: {}}, {rand_augment: {geometric: 1, num_ops: true}}]")
    assert sorted(lines[1:]) == [
        "- augment.ops[1].rand_augment.geometric: must be true or false, not an integer (it would silently become "
        "True). Received: augment.ops[1].rand_augment.geometric=1",
        "- augment.ops[1].rand_augment.num_ops: must be an integer, not true/false (it would silently become 1). "
        "Received: augment.ops[1].rand_augment.num_ops=True",
    ]


def test_values_of_the_right_kind_still_load():
    recipe = load_recipe(QUICKSTART, overrides=["train.verbose=2", "train.jit_compile=yes", "schedule.lr=1e-3",
                                                "schedule.unfrozen_lr=1", "data.oversample=false"])
    assert recipe.train.verbose == 2 and recipe.train.jit_compile is True and recipe.data.oversample is False
    # PyYAML reads 1e-3 as a string (YAML 1.1); an integer is a fine float
    assert recipe.schedule.lr == 0.001 and recipe.schedule.unfrozen_lr == 1.0


def test_a_fraction_for_an_integer_says_what_is_allowed():
    assert _lines(QUICKSTART, "schedule.epochs=1.5")[1] == (
        "- schedule.epochs: Input should be a valid integer, got a number with a fractional part; allowed: an "
        "integer > 0. Received: schedule.epochs=1.5")


def test_numbers_as_class_names_get_one_line_with_the_quoted_spelling():
    assert _lines(QUICKSTART, "data.classes=[5,6]") == [
        "The recipe has 1 problem(s):",
        "- data.classes: must be a list of strings; class names are strings, so quote numbers: "
        "--set 'data.classes=[\"5\", \"6\"]' on the command line, classes: ['5', '6'] in a recipe. "
        "Received: data.classes=[5, 6]"]
    assert load_recipe(QUICKSTART, overrides=['data.classes=["5","6"]']).data.classes == ["5", "6"]


def test_numbers_as_class_weight_keys_get_the_quoted_spelling():
    line = _lines(QUICKSTART, "train.class_weight={0: 2.0, 1: 1.0}")[1]
    assert "--set 'train.class_weight={\"0\": 2.0, \"1\": 1.0}' on the command line" in line
    assert line.endswith("Received: train.class_weight={0: 2.0, 1: 1.0}")


@pytest.mark.parametrize(("key", "preset_key"), [
    ("schedule.phases[1].lr", "schedule.unfrozen_lr"), ("schedule.phases[0].lr", "schedule.lr"),
    ("schedule.phases[1].epochs", "schedule.unfrozen_epochs"), ("schedule.phases[0].epochs", "schedule.epochs"),
    ("schedule.phases[1].warmup_epochs", "schedule.warmup_epochs"),
])
def test_set_into_a_preset_phase_names_the_preset_key(key, preset_key):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, overrides=[f"{key}=1e-4"])
    message = str(info.value)
    assert "the preset 'freeze_unfreeze', which has no schedule.phases list" in message
    assert f"set the preset's own key instead: --set {preset_key}=VALUE" in message
    assert message.endswith(f"Received: {key!r}")
    # and that key does what the phase key meant
    value = 1 if "epochs" in key else 1e-4
    assert getattr(load_recipe(QUICKSTART, overrides=[f"{preset_key}={value}"]).schedule, preset_key[9:]) == value


def test_a_phase_key_no_preset_has_says_to_write_the_phases_out():
    with pytest.raises(RecipeError, match=r"no key for the phases' 'step_gamma'; to set it, write the phases out"):
        load_recipe(QUICKSTART, overrides=["schedule.phases[1].step_gamma=0.5"])


def test_an_index_past_a_real_list_says_its_length():
    with pytest.raises(RecipeError) as info:
        load_recipe(LENET, overrides=["schedule.phases[3].lr=1e-4"])
    assert str(info.value) == ("--set schedule.phases[3].lr: index [3] is out of range: schedule.phases has 1 item(s) "
                               "(indices 0 to 0). Received: 'schedule.phases[3].lr'")


@pytest.mark.parametrize(("key", "bracketed"), [("schedule.phases.0.lr", "schedule.phases[0].lr"),
                                                ("head.hidden.0", "head.hidden[0]")])
def test_a_list_position_written_with_a_dot_gets_the_bracket_spelling(key, bracketed):
    with pytest.raises(RecipeError) as info:
        load_recipe(LENET, overrides=[f"{key}=1"])
    assert f"Write list positions in brackets: {bracketed}. Received: {key!r}" in str(info.value)
    assert load_recipe(LENET, overrides=[f"{bracketed}=1"]) is not None


@pytest.mark.parametrize("override,expected", [
    ("train.ema={momentum: true}", "- train.ema.momentum: must be a number > 0 and < 1, not true/false. "
                                   "Received: train.ema.momentum=True"),
    ("data.val_fraction=true", "- data.val_fraction: must be a number >= 0 and < 1, not true/false. "
                               "Received: data.val_fraction=True"),
])
def test_true_for_a_bounded_number_says_true_false_not_the_bound(override, expected):
    """true is read as 1 before the bound is checked: "should be less than 1" would hide the real mistake."""
    with pytest.raises(RecipeError) as raised:
        load_recipe(QUICKSTART, overrides=[override])
    assert str(raised.value).splitlines()[1:] == [expected]
