"""Bad albumentations settings in a recipe: one located line per problem, through every route a user takes.

albumentations validates its arguments with pydantic but re-raises the first failure as raw multi-line text;
ftkit checks each transform on its own and reports every problem at its place in the recipe
(``augment.albumentations.transform.transforms[2].scale``) with what was received, what is allowed and
albumentations' own reason, condensed to the same line.
"""

import copy
import warnings

import pytest
import yaml
from pydantic import ValidationError

from ftkit.augment import AugmentConfig
from ftkit.augment.config import load_albumentations
from ftkit.cli import main
from ftkit.recipe import RecipeError, load_recipe

PLACE = "augment.albumentations.transform.transforms"


def _spec(*transforms):
    return {"__version__": "2.0.8", "transform": {"__class_fullname__": "Compose", "p": 1.0,
                                                  "transforms": list(transforms)}}


def _flip(**args):
    return {"__class_fullname__": "HorizontalFlip", "p": 0.5, **args}


def _crop(**args):
    return {"__class_fullname__": "RandomResizedCrop", "p": 1.0, "size": [32, 32], **args}


def _jitter(**args):
    return {"__class_fullname__": "ColorJitter", "p": 1.0, **args}


# Two bad settings: a wrong type (brightness) and a value out of range (scale).
BAD = _spec(_flip(), _jitter(brightness="lots"), _crop(scale=[0.5, 3.0]))
TYPE_LINE = (f"- {PLACE}[1].brightness: ColorJitter does not accept this brightness. Allowed: tuple[float, float] "
             'or float. albumentations: "Input should be a valid tuple"; "Input should be a valid number, unable to '
             "parse string as a number\". Received: brightness='lots'")
RANGE_LINE = (f"- {PLACE}[2].scale: RandomResizedCrop does not accept this scale. Allowed: tuple[float, float]. "
              'albumentations: "All values in (0.5, 3.0) must be >= 0 and <= 1". Received: scale=[0.5, 3.0]')


@pytest.fixture
def bad_recipe(shared_data, tmp_path):
    recipe = {
        "data": {"train": str(shared_data / "catsdogs"), "image_size": [32, 32], "batch_size": 4},
        "augment": {"backend": "albumentations", "albumentations": BAD},
        "backbone": {"name": "lenet5"},
        "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.001}]},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe, path


def test_python_api_reports_both_bad_settings_located_with_allowed_and_received():
    with pytest.raises(ValidationError) as error:
        AugmentConfig(backend="albumentations", albumentations=BAD)
    errors = error.value.errors()
    assert [e["loc"] for e in errors] == [("albumentations", "transform", "transforms", 1, "brightness"),
                                          ("albumentations", "transform", "transforms", 2, "scale")]
    assert [e["input"] for e in errors] == ["lots", [0.5, 3.0]]
    assert errors[0]["msg"] == TYPE_LINE.split(": ", 1)[1]
    assert errors[1]["msg"] == RANGE_LINE.split(": ", 1)[1]
    # albumentations' raw text (its pydantic error dump, with links) no longer reaches the user
    assert "validation error for InitSchema" not in str(error.value)
    assert "errors.pydantic.dev" not in "".join(e["msg"] for e in errors)


def test_load_recipe_gives_one_line_per_problem(bad_recipe):
    recipe, path = bad_recipe
    for source in (recipe, path):
        with pytest.raises(RecipeError) as error:
            load_recipe(source)
        assert str(error.value).splitlines() == ["The recipe has 2 problem(s):", TYPE_LINE, RANGE_LINE]


@pytest.mark.parametrize("command", [["train", "{recipe}", "--smoke", "--out", "{out}"],
                                     ["augment", "preview", "{recipe}", "--out", "{out}"]],
                         ids=["train-smoke", "augment-preview"])
def test_cli_prints_the_located_lines_and_writes_nothing(bad_recipe, tmp_path, capsys, command):
    _, path = bad_recipe
    out = tmp_path / "out"
    code = main([part.format(recipe=path, out=out) for part in command])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == [f"ftkit {command[0]}: error: The recipe has 2 problem(s):",
                                         TYPE_LINE, RANGE_LINE]
    assert not out.exists()


def test_every_bad_transform_is_reported_including_nested_and_missing_ones():
    spec = _spec(
        {"__class_fullname__": "RandomResizedCrop", "p": 1.0},  # size is required
        _flip(prob=3),
        {"__class_fullname__": "OneOf", "p": 1.0, "transforms": [
            {"__class_fullname__": "Rotate", "p": 1.0, "border_mode": 99}, "HorizontalFlip"]},
        {"__class_fullname__": "HorizontalFlap", "p": 1.0},
    )
    with pytest.raises(ValidationError) as error:
        load_albumentations(spec)
    found = {e["loc"]: e["msg"] for e in error.value.errors()}
    assert list(found) == [("transform", "transforms", 0, "size"), ("transform", "transforms", 1, "prob"),
                           ("transform", "transforms", 2, "transforms", 0, "border_mode"),
                           ("transform", "transforms", 2, "transforms", 1),
                           ("transform", "transforms", 3, "__class_fullname__")]
    messages = list(found.values())
    assert messages[0].startswith("RandomResizedCrop needs 'size'. Allowed: tuple[int, int].")
    assert messages[1] == "unknown parameter 'prob' for HorizontalFlip. Allowed: p. Received: prob=3"
    assert messages[2].startswith("Rotate does not accept this border_mode. Allowed: one of 0, 1, 2, 3, 4.")
    assert messages[2].endswith("Received: border_mode=99")
    assert messages[3].endswith("Received: transforms[1]='HorizontalFlip'")
    assert "Did you mean 'HorizontalFlip'?" in messages[4]
    assert all("\n" not in message for message in messages)


def test_bounds_of_a_constrained_parameter_are_named():
    with pytest.raises(ValidationError) as error:
        load_albumentations(_spec(_flip(p=2)))
    (only,) = error.value.errors()
    assert only["msg"] == ('HorizontalFlip does not accept this p. Allowed: float >= 0 and <= 1. albumentations: '
                           '"Input should be less than or equal to 1". Received: p=2')


def test_albumentations_own_to_dict_output_loads_even_with_parent_class_arguments():
    import albumentations as A

    # A.to_dict writes the arguments of every __init__ in the MRO: PadIfNeeded's `padding` comes from Pad.
    spec = A.to_dict(A.Compose([A.PadIfNeeded(min_height=40, min_width=40), A.SafeRotate(limit=10)]))
    assert "padding" in spec["transform"]["transforms"][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = load_albumentations(spec)
    assert [type(t).__name__ for t in pipeline.transforms] == ["PadIfNeeded", "SafeRotate"]
    assert (pipeline.transforms[0].min_height, pipeline.transforms[1].limit) == (40, (-10, 10))
    assert [str(w.message) for w in caught] == []  # nor albumentations' warnings about its own arguments
    # ...but an argument no class in the MRO takes is still refused
    bad = copy.deepcopy(spec)
    bad["transform"]["transforms"][0]["paddding"] = 2
    with pytest.raises(ValidationError, match=r"unknown parameter 'paddding' for PadIfNeeded\. Allowed: min_height, "):
        load_albumentations(bad)


def test_albumentations_warnings_are_shown_not_swallowed():
    # albumentations fills a missing `p` with 0.5 and warns; before, the loader recorded and dropped its warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = load_albumentations(_spec({"__class_fullname__": "HorizontalFlip"}))
    assert pipeline.transforms[0].p == 0.5
    assert any("has no 'p' parameter" in str(w.message) for w in caught)
