"""The augment section's schema: every op loads from YAML, bad ops and parameters fail at load time."""

import pytest
import yaml
from pydantic import ValidationError

from ftkit.augment import OPS, AugmentConfig


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_builtin_op_loads_from_yaml_with_defaults_and_round_trips(op):
    config = AugmentConfig.model_validate(yaml.safe_load(f"backend: keras\nops:\n  - {op}: {{}}\n"))
    assert [name for name, _ in config.ops] == [op]
    assert config.ops[0][1] == OPS[op]()
    assert AugmentConfig.model_validate(config.to_recipe()) == config


def test_guidance_example_loads_with_its_values():
    text = """
    backend: keras
    seed: 3
    ops:
      - random_resized_crop: {scale: [0.08, 1.0], ratio: [0.75, 1.333]}
      - flip: {mode: horizontal}
      - color_jitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.02}
    mixup: {alpha: 0.2}
    cutmix: {alpha: 1.0}
    mix_prob: 0.5
    """
    config = AugmentConfig.model_validate(yaml.safe_load(text))
    assert config.ops[0][1].ratio == (0.75, 1.333)
    assert config.ops[2][1].hue == 0.02
    assert (config.mixup.alpha, config.cutmix.alpha, config.mix_prob, config.switch_prob) == (0.2, 1.0, 0.5, 0.5)
    assert config.uses_mixing


def test_unknown_op_names_it_suggests_the_closest_and_lists_allowed():
    with pytest.raises(ValidationError) as error:
        AugmentConfig(backend="keras", ops=[{"random_resize_crop": {}}])
    message = str(error.value)
    assert "unknown augmentation op 'random_resize_crop'" in message
    assert "Did you mean 'random_resized_crop'?" in message
    assert "color_jitter" in message and "grid_mask" in message
    assert "Received: op='random_resize_crop'" in message


def test_unknown_parameter_names_it_and_lists_allowed():
    with pytest.raises(ValidationError) as error:
        AugmentConfig(backend="keras", ops=[{"color_jitter": {"brightnes": 0.2}}])
    message = str(error.value)
    assert "unknown parameter 'brightnes' for op 'color_jitter'" in message
    assert "Did you mean 'brightness'?" in message
    assert "Allowed: brightness, contrast, saturation, hue" in message


@pytest.mark.parametrize(
    ("op", "needle"),
    [
        ({"random_resized_crop": {"scale": [0.9, 0.1]}}, "scale"),
        ({"flip": {"mode": "diagonal"}}, "mode"),
        ({"color_jitter": {"hue": 0.9}}, "hue"),
        ({"rotation": {"factor": 0}}, "factor"),
        ({"rand_augment": {"num_ops": 0}}, "num_ops"),
    ],
)
def test_out_of_range_values_are_rejected_at_load(op, needle):
    with pytest.raises(ValidationError, match=needle):
        AugmentConfig(backend="keras", ops=[op])


def test_section_level_mistakes_are_errors():
    with pytest.raises(ValidationError, match="mixup_alpha"):
        AugmentConfig.model_validate({"backend": "keras", "mixup_alpha": 0.2})
    with pytest.raises(ValidationError, match="keras back end only"):
        AugmentConfig(backend="none", ops=[{"flip": {}}])
    with pytest.raises(ValidationError, match="needs an `albumentations` pipeline"):
        AugmentConfig(backend="albumentations")
    with pytest.raises(ValidationError, match="alpha"):
        AugmentConfig(backend="none", mixup={"alpha": 0})
    with pytest.raises(ValidationError, match="mix_prob"):
        AugmentConfig(backend="none", mix_prob=1.5)


def test_shipped_albumentations_recipe_loads(repo_root):
    from ftkit.augment.config import load_albumentations

    section = yaml.safe_load((repo_root / "recipes" / "augment" / "albumentations_standard.yaml").read_text())
    config = AugmentConfig.model_validate(section["augment"])
    pipeline = load_albumentations(config.albumentations)
    assert [type(t).__name__ for t in pipeline.transforms] == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter"]
    assert pipeline.transforms[0].size == (224, 224)


def test_shipped_keras_recipe_loads(repo_root):
    section = yaml.safe_load((repo_root / "recipes" / "augment" / "keras_standard.yaml").read_text())
    config = AugmentConfig.model_validate(section["augment"])
    assert [name for name, _ in config.ops] == ["random_resized_crop", "flip", "color_jitter"]


def test_standard_policy_is_timms_imagenet_default_on_both_back_ends(repo_root):
    """timm's transforms_imagenet_train: Inception crop, flip on half, colour jitter 0.4 without hue; the shipped
    recipes and the op's defaults are the same policy."""
    from ftkit.augment import standard_policy
    from ftkit.augment.config import ColorJitter, load_albumentations

    keras_jitter = dict(standard_policy("keras").ops[2][1])
    assert keras_jitter == {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0} == dict(ColorJitter())
    shipped = yaml.safe_load((repo_root / "recipes" / "augment" / "keras_standard.yaml").read_text())
    assert dict(AugmentConfig.model_validate(shipped["augment"]).ops[2][1]) == keras_jitter
    for spec in (standard_policy("albumentations").albumentations,
                 yaml.safe_load((repo_root / "recipes" / "augment" / "albumentations_standard.yaml").read_text())[
                     "augment"]["albumentations"]):
        crop, flip, jitter = load_albumentations(spec).transforms
        assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3)) and flip.p == 0.5
        assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3
        assert jitter.hue == (0.0, 0.0) and jitter.p == 1.0


def _albumentations_section(transform):
    return {"backend": "albumentations", "albumentations": {"transform": {
        "__class_fullname__": "Compose", "p": 1.0, "transforms": [transform]}}}


def test_albumentations_unknown_transform_and_ignored_argument_are_errors():
    with pytest.raises(ValidationError) as error:
        AugmentConfig.model_validate(_albumentations_section({"__class_fullname__": "HorizontalFlap", "p": 0.5}))
    assert "unknown albumentations transform 'HorizontalFlap'" in str(error.value)
    assert "Did you mean 'HorizontalFlip'?" in str(error.value)
    with pytest.raises(ValidationError, match="unknown parameter 'pp' for HorizontalFlip. Did you mean 'p'"):
        AugmentConfig.model_validate(_albumentations_section({"__class_fullname__": "HorizontalFlip", "pp": 1}))
    with pytest.raises(ValidationError, match="brightness"):
        AugmentConfig.model_validate(
            _albumentations_section({"__class_fullname__": "ColorJitter", "p": 1.0, "brightness": -3})
        )
    with pytest.raises(ValidationError, match="'transform' key"):
        AugmentConfig(backend="albumentations", albumentations={"__class_fullname__": "Compose"})


def test_parameter_errors_are_located_at_the_ops_index_and_name():
    with pytest.raises(ValidationError) as error:
        AugmentConfig(backend="keras", ops=[{"flip": {}}, {"flip": {"mode": "sideways"}}, {"flipp": {}}])
    errors = error.value.errors()
    assert [e["loc"] for e in errors] == [("ops", 1, "flip", "mode"), ("ops", 2)]
    assert errors[0]["input"] == "sideways"
    assert "Did you mean 'flip'?" in errors[1]["msg"]


def test_parsed_ops_pass_through_unchanged():
    config = AugmentConfig(backend="keras", ops=[{"flip": {"mode": "vertical"}}])
    assert AugmentConfig(backend="keras", ops=list(config.ops)) == config
