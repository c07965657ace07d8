"""Schedules: presets expand into phases, groups resolve against the backbone, LR curves are pure functions."""

import math

import pytest

from ftkit.schedule import (
    Phase,
    PhaseConfig,
    ScheduleConfig,
    expand_preset,
    group_multipliers,
    lr_at,
    resolve_phases,
)

GROUPS = ["stem", "stage1", "stage2"]


def test_freeze_preset_is_one_head_phase():
    phases = resolve_phases(ScheduleConfig(preset="freeze", epochs=4, lr=0.01), GROUPS)
    assert [(p.trainable_groups, p.epochs, p.lr) for p in phases] == [(("head",), 4, 0.01)]


def test_freeze_unfreeze_drops_the_rate_and_trains_everything():
    phases = resolve_phases(ScheduleConfig(preset="freeze_unfreeze", epochs=2, unfrozen_epochs=3, lr=0.01), GROUPS)
    assert [p.trainable_groups for p in phases] == [("head",), ("stem", "stage1", "stage2", "head")]
    assert phases[1].epochs == 3 and phases[1].lr == pytest.approx(0.001)


def test_gradual_unfreezes_one_group_at_a_time_from_the_top():
    phases = resolve_phases(ScheduleConfig(preset="gradual", epochs=1), GROUPS)
    assert [p.trainable_groups for p in phases] == [
        ("head",), ("stage2", "head"), ("stage1", "stage2", "head"), ("stem", "stage1", "stage2", "head")]


def test_discriminative_rates_decay_towards_the_stem():
    assert group_multipliers(("stem", "stage1", "stage2", "head"), GROUPS, lr_decay=0.5) == {
        "stem": 0.125, "stage1": 0.25, "stage2": 0.5, "head": 1.0}
    assert group_multipliers(("stage2", "head"), GROUPS, lr_decay=0.1, explicit={"stage2": 0.3}) == {
        "stage2": 0.3, "head": 1.0}


def test_explicit_phases_by_count_and_by_name():
    schedule = ScheduleConfig(phases=[PhaseConfig(train=2), PhaseConfig(train=["stem"])])
    phases = resolve_phases(schedule, GROUPS)
    assert phases[0].trainable_groups == ("stage1", "stage2", "head")
    assert phases[1].trainable_groups == ("stem", "head")


def test_unknown_group_is_an_error_naming_the_phase():
    schedule = ScheduleConfig(phases=[PhaseConfig(), PhaseConfig(train=["stage9"])])
    with pytest.raises(ValueError, match=r"schedule\.phases\[1\]\.train names layer groups that do not exist: \['stage9'\]"):
        resolve_phases(schedule, GROUPS)
    with pytest.raises(ValueError, match=r"last 4 layer groups but the backbone has 3.*Received: train=4"):
        resolve_phases(ScheduleConfig(phases=[PhaseConfig(train=4)]), GROUPS)


def test_schedule_needs_a_preset_or_phases():
    with pytest.raises(ValueError, match="needs either a preset"):
        ScheduleConfig()
    with pytest.raises(ValueError, match="not both"):
        ScheduleConfig(preset="freeze", phases=[PhaseConfig()])


def _phase(**kw) -> Phase:
    base = dict(index=0, name="p", epochs=4, trainable_groups=("head",), lr=1.0, lr_schedule="constant",
                warmup_epochs=0.0, step_epochs=1, step_gamma=0.1, min_lr_factor=0.0, train_bn=False,
                multipliers={"head": 1.0})
    return Phase(**{**base, **kw})


def test_lr_curves():
    cosine = _phase(lr_schedule="cosine", min_lr_factor=0.1)
    assert lr_at(0, phase=cosine, steps_per_epoch=10) == pytest.approx(1.0)
    assert lr_at(20, phase=cosine, steps_per_epoch=10) == pytest.approx(0.55)
    assert lr_at(40, phase=cosine, steps_per_epoch=10) == pytest.approx(0.1)
    step = _phase(lr_schedule="step", step_epochs=2, step_gamma=0.5)
    assert [lr_at(s, phase=step, steps_per_epoch=10) for s in (0, 19, 20, 39)] == [1.0, 1.0, 0.5, 0.5]
    warm = _phase(lr_schedule="cosine", warmup_epochs=1)
    assert [lr_at(s, phase=warm, steps_per_epoch=10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, phase=warm, steps_per_epoch=10) == pytest.approx(1.0)


def test_keras_schedule_follows_the_pure_function():
    from ftkit.training.engine import phase_learning_rate

    for phase in (_phase(lr_schedule="cosine", warmup_epochs=1.5, min_lr_factor=0.2),
                  _phase(lr_schedule="step", step_epochs=1, step_gamma=0.3, warmup_epochs=0.5)):
        schedule = phase_learning_rate(phase, steps_per_epoch=7)
        for step in range(0, 29):
            assert float(schedule(step)) == pytest.approx(lr_at(step, phase=phase, steps_per_epoch=7), rel=1e-5)
    assert phase_learning_rate(_phase(), steps_per_epoch=7) == 1.0
    assert not math.isnan(lr_at(0, phase=_phase(epochs=1, lr_schedule="cosine"), steps_per_epoch=1))


def test_preset_expansion_is_data():
    phases = expand_preset(ScheduleConfig(preset="freeze_unfreeze", lr_decay=0.5), GROUPS)
    assert [p.lr_decay for p in phases] == [None, 0.5]


@pytest.mark.parametrize("value", ["last_99", 0, ["stem", 3]])
def test_bad_train_value_names_every_allowed_form(value):
    with pytest.raises(ValueError) as error:
        PhaseConfig(train=value)
    errors = error.value.errors()
    assert len(errors) == 1 and errors[0]["loc"] == ("train",)
    message = errors[0]["msg"]
    for form in ("'head'", "'all'", "a number N >= 1", "a list of backbone layer group names"):
        assert form in message
    assert message.endswith(f"Received: train={value!r}")
