"""validate_combination: estimator + reward transforms + loss terms, rejected with a reason."""

from __future__ import annotations

import pytest

from agentgym.trainers.compose import CombinationError, validate_combination


@pytest.mark.parametrize("algo", ["grpo", "rloo", "gigpo", "ppo", "spa"])
def test_every_estimator_alone_is_valid(algo) -> None:
    c = validate_combination(algo, group_size=4)
    assert c.algo == algo
    assert c.needs_value_head == (algo == "ppo")
    assert c.needs_progress == (algo == "spa")


def test_independent_axes_combine() -> None:
    c = validate_combination(
        "gigpo",
        ["gated"],
        ["kl", "epo"],
        group_size=8,
        channels={"tests_run"},
        gate_channels=("won", "tests_run", "reward"),
    )
    assert c.transforms == ("gated",) and c.terms == ("kl", "epo") and c.needs_reference
    assert validate_combination("ppo", ["direct"], ["entropy"], group_size=1).needs_value_head


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(algo="ppo", has_value_head=False), "value head"),
        (dict(algo="spa", has_progress_estimator=False), "progress estimator"),
        (dict(algo="grpo", group_size=1), "group_size >= 2"),
        (dict(algo="gigpo", group_size=1), "group_size >= 2"),
        (dict(algo="spa", group_size=1), "group_size >= 2"),
        (dict(algo="rloo", group_size=1), "every advantage would be 0"),
        (dict(algo="reinforce"), "unknown estimator 'reinforce'"),
        (dict(algo="grpo", transforms=["scaled"]), "unknown reward transform"),
        (dict(algo="grpo", transforms=["gated", "direct"]), "choose one"),
        (dict(algo="grpo", transforms=["gated", "gated"]), "repeat"),
        (dict(algo="grpo", terms=["l2"]), "unknown loss term"),
        (dict(algo="grpo", terms=["entropy", "epo"]), "entropy bonus"),
        (dict(algo="grpo", terms=["kl"], has_reference=False), "reference"),
        (dict(algo="spa", transforms=["gated"]), "no effect"),
        (
            dict(
                algo="grpo",
                transforms=["gated"],
                channels=set(),
                gate_channels=("won", "tests_run"),
            ),
            "never appear in the env's trajectories",
        ),
        (dict(algo="grpo", transforms=["gated"], gate_channels=("won",)), "gates nothing"),
    ],
)
def test_invalid_combinations_say_why(kwargs, match) -> None:
    kwargs = {"group_size": 4, **kwargs}
    with pytest.raises(CombinationError, match=match):
        validate_combination(**kwargs)


def test_gigpo_without_anchors_warns() -> None:
    with pytest.warns(UserWarning, match="equals grpo"):
        validate_combination("gigpo", group_size=4, env_has_anchors=False)


def test_gated_channels_from_the_env_are_accepted() -> None:
    validate_combination(
        "grpo",
        ["gated"],
        group_size=4,
        channels={"valid_tool", "tests_run"},
        gate_channels=("won", "valid_tool", "tests_run"),
    )
