"""Recipe messages a new user meets: list-valued keys say their length and item type, a --set value that is not
YAML says so with a valid spelling, a key in the wrong section names where it belongs, and docs/RECIPES.md is
the schema's own reference (regenerated and compared here, so it cannot go stale)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from ftkit.recipe import Recipe, RecipeError, _schema_fields, load_recipe
from ftkit.recipe_reference import _MEANINGS, recipe_reference

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"  # schedule: preset freeze_unfreeze
LENET = REPO / "recipes" / "lenet5_mnist.yaml"  # schedule: one explicit phase
REFERENCE = REPO / "docs" / "RECIPES.md"


def _error(source, *overrides: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(source, overrides=list(overrides))
    return str(info.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("data.image_size=32",
     "- data.image_size: must be a list of 2 integers > 0 ([height, width]) or null. Received: data.image_size=32"),
    ("data.image_size=[32, 32, 3]", "- data.image_size: must be a list of 2 integers > 0 ([height, width]) or null; "
                                    "it has 3 items. Received: data.image_size=[32, 32, 3]"),
    ("head.hidden=64", "- head.hidden: must be a list of integers > 0. Received: head.hidden=64"),
    ("evaluate.top_k=5", "- evaluate.top_k: must be a list of integers > 0 or null. Received: evaluate.top_k=5"),
    ("evaluate.splits=val",
     "- evaluate.splits: must be a list of items from 'val', 'test'. Received: evaluate.splits='val'"),
    ("data.classes=cats", "- data.classes: must be a list of strings or null. Received: data.classes='cats'"),
])
def test_a_list_valued_key_says_what_it_takes(override, expected):
    assert _error(QUICKSTART, override).splitlines() == ["The recipe has 1 problem(s):", expected]


def test_a_value_that_is_not_yaml_says_so_with_a_valid_spelling():
    message = _error(QUICKSTART, "data.image_size=[32")
    assert message == (
        "--set data.image_size: the value is not valid YAML (while parsing a flow sequence, expected ',' or ']', "
        "but got '<stream end>' at column 4). Write lists as [a, b] and mappings as {key: value}, quote strings "
        "that hold ':', '#' or brackets, and quote the whole --set argument for the shell: "
        "--set 'data.image_size=[32, 32]'. Received: '[32'")
    # the spelling shown is one that loads
    assert load_recipe(QUICKSTART, overrides=["data.image_size=[32, 32]"]).data.image_size == (32, 32)
    # a key with a default shows the default's spelling, a null one an example; a required string key shows none
    assert message_ending(_error(QUICKSTART, "evaluate.splits=[val")) == "--set 'evaluate.splits=[\"val\", \"test\"]'. Received: '[val'"
    assert message_ending(_error(QUICKSTART, "evaluate.top_k=[5")) == "--set 'evaluate.top_k=[1, 5]'. Received: '[5'"
    assert message_ending(_error(QUICKSTART, "data.train=a: b: c")) == "for the shell. Received: 'a: b: c'"


def message_ending(message: str) -> str:
    return re.search(r"(--set '[^']*'|for the shell)\. Received: .*$", message).group(0)


def test_a_key_in_the_wrong_place_names_where_it_belongs():
    assert _error(QUICKSTART, "batch_size=4").splitlines()[1].startswith(
        "- unknown key 'batch_size' in the top level. Did you mean data.batch_size? Allowed keys: ['augment', ")
    assert "unknown key 'lr' in data. Did you mean schedule.lr or schedule.phases[i].lr? " in _error(
        QUICKSTART, "data.lr=0.01")
    # the same in a recipe file: a key under the wrong section, and a section's key at the top level
    data = yaml.safe_load(QUICKSTART.read_text())
    data["train"]["classes"] = ["ants"]
    data["patience"] = 3
    lines = _error(data).splitlines()
    assert lines[0] == "The recipe has 2 problem(s):"
    assert sorted(line.split(" Allowed keys")[0] for line in lines[1:]) == [
        "- unknown key 'classes' in train. Did you mean data.classes?",
        "- unknown key 'patience' in the top level. Did you mean train.early_stopping.patience?",
    ]
    # a typo of a key that exists nowhere still gets the closest key of its own section
    assert "unknown key 'batch_sise' in data. Did you mean 'batch_size'?" in _error(QUICKSTART, "data.batch_sise=4")


def test_the_reference_is_the_schema_s_own():
    assert REFERENCE.read_text() == recipe_reference(), (
        "docs/RECIPES.md is out of date: python -m ftkit.recipe_reference > docs/RECIPES.md")


def test_every_key_has_a_meaning_and_none_is_stale():
    paths = {path: field for path, field in _schema_fields(Recipe) if "." in path}
    assert [path for path, field in paths.items() if not (field.description or _MEANINGS.get(path))] == []
    assert sorted(set(_MEANINGS) - set(paths)) == []
    text = REFERENCE.read_text()
    for key in ("max_samples_per_class", "freeze_unfreeze", "gradual", "lr_multipliers", "early_stopping.patience"):
        assert f"`{key}`" in text


def test_the_reference_s_schedule_switches_load():
    """The --set lines docs/RECIPES.md gives for switching between explicit phases and a preset work."""
    paragraph = re.search(r"A schedule takes a preset or explicit phases, not both\..*?\n\n", REFERENCE.read_text(),
                          re.S).group(0)
    to_preset, to_phases = [shlex.split(found)[1::2] for found in
                            re.findall(r"`(--set [^`]*--set [^`]*)`", paragraph)]
    with pytest.raises(RecipeError, match="schedule takes a preset or explicit phases, not both"):
        load_recipe(LENET, overrides=[to_preset[1]])
    assert load_recipe(LENET, overrides=to_preset).schedule.preset == "freeze_unfreeze"
    schedule = load_recipe(QUICKSTART, overrides=to_phases).schedule
    assert schedule.preset is None
    assert [(phase.train, phase.epochs, phase.lr) for phase in schedule.phases] == [("head", 2, 1e-3), ("all", 1, 1e-4)]
