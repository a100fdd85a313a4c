"""ALFWorld family: real TextWorld PDDL engine, real alfworld wrappers, generated games.

Games are generated once per session into the session cache ($AGENTGYM_CACHE, a temp dir set by
conftest): 12 train games (2 per task type), 2 valid_seen, 2 valid_unseen.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

import agentgym  # noqa: E402
from agentgym.checker import check_env  # noqa: E402

TRAIN_N = 12
VALID_N = 2
ALL_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)


@pytest.fixture(scope="session")
def generated() -> dict[str, Path]:
    """The generated sets (json_2.1.1 folders) the env's generated mode uses, built once."""
    from agentgym.environments.alfworld.data import generated_games

    return {
        "train": generated_games("train", TRAIN_N, ALL_TYPES, workers=2),
        "valid_seen": generated_games("valid_seen", VALID_N, ALL_TYPES, workers=2),
        "valid_unseen": generated_games("valid_unseen", VALID_N, ALL_TYPES, workers=2),
    }


@pytest.fixture(scope="session")
def official_layout(generated: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the download, with entries ALFWorld's loader must skip."""
    root = tmp_path_factory.mktemp("alfworld_data")
    data = root / "json_2.1.1"
    for split, src in generated.items():
        shutil.copytree(src / split, data / split)
    unseen = data / "valid_unseen"
    some_trial = next(unseen.rglob("game.tw-pddl")).parent

    def clone(folder: str, edit_game: dict | None = None, drop_game: bool = False) -> None:
        dst = unseen / folder / "trial_T00000000_000000_000000"
        shutil.copytree(some_trial, dst)
        game_file = dst / "game.tw-pddl"
        if drop_game:
            game_file.unlink()
        elif edit_game is not None:
            game = json.loads(game_file.read_text())
            game.update(edit_game)
            for k, v in edit_game.items():
                if v is ...:
                    del game[k]
            game_file.write_text(json.dumps(game))

    clone("pick_and_place_with_movable_recep-Spoon-Cup-Sink-10")  # movable: skipped
    clone("pick_heat_then_place_in_recep-AppleSliced-None-Fridge-10")  # sliced: skipped
    clone("pick_and_place_simple-Mug-None-Shelf-10", edit_game={"solvable": False})
    clone("pick_and_place_simple-Cup-None-Shelf-10", edit_game={"solvable": ...})
    clone("pick_and_place_simple-Bowl-None-Shelf-10", drop_game=True)
    return root


def _expected_unseen(root: Path) -> list[str]:
    return sorted(
        p.parent.relative_to(root / "json_2.1.1").as_posix()
        for p in (root / "json_2.1.1" / "valid_unseen").rglob("traj_data.json")
        if "trial_G" in p.parent.name
    )


def test_every_alfworld_spec_passes_check_env(
    generated: dict[str, Path], official_layout: Path
) -> None:
    specs = [s for s in agentgym.all_specs() if s.family == "alfworld"]
    assert {s.id for s in specs} >= {
        "alfworld/Train-v0",
        "alfworld/ValidSeen-v0",
        "alfworld/ValidUnseen-v0",
        "alfworld/Generated-v0",
    }
    for s in specs:
        if s.kwargs["source"] == "generated":
            n = TRAIN_N if s.kwargs["split"] == "train" else VALID_N
            check_env(agentgym.make(s.id, num_games=n))
        else:
            check_env(agentgym.make(s.id, data_dir=str(official_layout)))


def test_official_layout_loader_applies_alfworld_skip_rules(official_layout: Path) -> None:
    env = agentgym.make("alfworld/ValidUnseen-v0", data_dir=str(official_layout))
    try:
        assert env.source == "official"
        # Only the generated trials survive: movable, Sliced, unsolvable, no 'solvable' key and
        # missing game files are all skipped.
        assert sorted(env.tasks) == _expected_unseen(official_layout)
        obs, info = env.reset(seed=0)
        assert info["source"] == "official" and info["task_id"].startswith("valid_unseen/")
    finally:
        env.close()
    # split="test" (what `agentgym train` evaluates on) is the unseen split.
    test_env = agentgym.make("alfworld/Train-v0", data_dir=str(official_layout), split="test")
    try:
        assert test_env.split == "valid_unseen" and sorted(test_env.tasks) == sorted(env.tasks)
    finally:
        test_env.close()

    # The same folder through $ALFWORLD_DATA, pointing at json_2.1.1 itself.
    import os

    old = os.environ.get("ALFWORLD_DATA")
    os.environ["ALFWORLD_DATA"] = str(official_layout / "json_2.1.1")
    try:
        env = agentgym.make("alfworld/Train-v0")
        assert env.source == "official" and len(env.tasks) == TRAIN_N
        env.close()
    finally:
        if old is None:
            os.environ.pop("ALFWORLD_DATA", None)
        else:
            os.environ["ALFWORLD_DATA"] = old


def test_task_type_filter_uses_alfworld_ids(official_layout: Path) -> None:
    env = agentgym.make("alfworld/Train-v0", data_dir=str(official_layout), task_types=[3, 6])
    try:
        types = {t.split("/")[1].split("-")[0] for t in env.tasks}
        assert types == {"pick_clean_then_place_in_recep", "pick_two_obj_and_place"}
        assert len(env.tasks) == 4  # 2 games per type in the 12-game set
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown task type id"):
        agentgym.make("alfworld/Train-v0", data_dir=str(official_layout), task_types=[7])


def test_missing_official_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="json_2.1.1"):
        agentgym.make("alfworld/Train-v0", data_dir=str(tmp_path))


def test_expert_wins_generated_games_of_all_six_types(generated: dict[str, Path]) -> None:
    from agentgym.policies import ExpertPolicy
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout

    spec = agentgym.spec("alfworld/Generated-v0")
    with EnvPool(spec, num_envs=1, backend="sync", env_kwargs={"num_games": TRAIN_N}) as pool:
        trajs = rollout(pool, ExpertPolicy(), num_groups=TRAIN_N, group_size=1, seed=0)
    assert len(trajs) == TRAIN_N
    tasks = {t.task for t in trajs}
    assert len(tasks) == TRAIN_N  # seeds 0..11 cover the 12 games once
    wins = sum(t.won for t in trajs)
    assert wins >= 0.95 * TRAIN_N, [(t.task, t.won) for t in trajs]
    for t in trajs:
        # SFT data: every expert turn was accepted by the engine.
        assert t.turns and all(turn.valid and turn.action for turn in t.turns)
    types = {t.split("/")[1].split("-")[0] for t in tasks}
    assert types == set(ALL_TYPES)


def test_official_num_games_is_a_fixed_subset_across_types(official_layout: Path) -> None:
    full = agentgym.make("alfworld/Train-v0", data_dir=str(official_layout))
    a = agentgym.make("alfworld/Train-v0", data_dir=str(official_layout), num_games=4)
    b = agentgym.make("alfworld/Train-v0", data_dir=str(official_layout), num_games=4)
    try:
        assert len(a.tasks) == 4 and a.tasks == b.tasks  # the same subset every time
        assert set(a.tasks) <= set(full.tasks) and a.tasks == sorted(a.tasks)
        assert a.tasks != full.tasks[:4]  # not the head of the sorted list ...
        types = {t.split("/")[1].split("-")[0] for t in a.tasks}
        assert len(types) > 2  # ... whose first 4 games are only 2 task types
    finally:
        for e in (full, a, b):
            e.close()


def test_consecutive_seeds_mix_task_types(generated: dict[str, Path]) -> None:
    """Seeds map to games through a fixed shuffle: a short window of seeds (an eval, one
    training step's groups) spans task types, seeds 0..n-1 still play each game once, and the
    mapping is the same in every env instance (every pool worker)."""

    def task_of(env: Any, seed: int) -> str:
        return env.reset(seed=seed)[1]["task_id"]

    a = agentgym.make("alfworld/Generated-v0", num_games=TRAIN_N)
    b = agentgym.make("alfworld/Generated-v0", num_games=TRAIN_N)
    try:
        order = [task_of(a, s) for s in range(TRAIN_N)]
        assert sorted(order) == sorted(a.tasks)  # a permutation: every game once
        assert order != a.tasks  # not the sorted (grouped by type) order
        assert [task_of(b, s) for s in range(TRAIN_N)] == order  # same in every instance
        assert task_of(a, TRAIN_N + 3) == order[3]  # seeds wrap around
        first_third = {t.split("/")[1].split("-")[0] for t in order[: TRAIN_N // 3]}
        assert len(first_third) > 2  # the sorted list's first 4 games are only 2 types
        assert a.reset(options={"task": 5})[1]["task_id"] == a.tasks[5]  # index = sorted order
    finally:
        a.close()
        b.close()


def test_random_policy_wins_few(generated: dict[str, Path]) -> None:
    from agentgym.policies import RandomPolicy
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout

    spec = agentgym.spec("alfworld/Generated-v0")
    kwargs = {"num_games": TRAIN_N}
    with EnvPool(spec, num_envs=1, backend="sync", env_kwargs=kwargs) as pool:
        trajs = rollout(pool, RandomPolicy(seed=1), num_groups=6, group_size=1, seed=0)
    wins = sum(t.won for t in trajs)
    assert wins <= 2, f"random policy won {wins}/6: the tasks are too easy"
    assert all(t.truncated or t.won for t in trajs)


def test_invalid_action_is_nothing_happens_and_flagged(generated: dict[str, Path]) -> None:
    env = agentgym.make("alfworld/Generated-v0", num_games=TRAIN_N)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.text.startswith("You are in the middle of a room. Looking quickly around you")
        assert f"Your task is to: {obs.task}" in obs.text
        o, r, term, trunc, info = env.step("fly to the moon")
        assert o.text == "Nothing happens." and info["valid"] is False and not term
        assert o.anchor == obs.anchor  # the state did not change
        first = obs.admissible_actions[0]
        o, r, term, trunc, info = env.step("  " + first.upper() + ". ")
        assert info["valid"] is True
    finally:
        env.close()


def test_anchor_is_the_true_state_including_inventory(generated: dict[str, Path]) -> None:
    env = agentgym.make("alfworld/Generated-v0", num_games=TRAIN_N)
    try:
        obs, _ = env.reset(seed=0)
        take_from = None
        # Follow the expert until it takes something: remember where it went.
        while True:
            a = env.expert_action()
            assert a is not None
            if a.startswith("take "):
                take_from = a.rsplit(" from ", 1)[1]
            obs, *_ = env.step(a)
            if take_from:
                break
        held = env.state_facts()
        assert any(f.startswith("holds(") for f in held)
        other = next(
            x for x in obs.admissible_actions if x.startswith("go to ") and take_from not in x
        )
        env.step(other)
        looked_holding, *_ = env.step("look")

        env.reset(seed=0)
        env.step(other)
        looked_empty, *_ = env.step("look")
        assert not any(f.startswith("holds(") for f in env.state_facts())

        # Same text ("You are facing the X. Next to it, you see nothing."), different states.
        assert looked_holding.text == looked_empty.text
        assert looked_holding.anchor != looked_empty.anchor

        # Equal states reached by different paths share the anchor.
        env.reset(seed=0)
        a1 = env.step(other)[0]
        env.reset(seed=0)
        env.step(next(x for x in obs.admissible_actions if x.startswith("go to ") and x != other))
        a2 = env.step(other)[0]
        assert a1.text == a2.text and a1.anchor == a2.anchor
    finally:
        env.close()


def test_generator_is_deterministic_across_processes(
    generated: dict[str, Path], tmp_path: Path
) -> None:
    """Seeds 0-1 generated here (in-process) equal the cached set (built by worker processes)."""
    from agentgym.cli import main

    rc = main(
        [
            "alfworld",
            "generate",
            "--n",
            "2",
            "--seed",
            "0",
            "--out",
            str(tmp_path),
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert rc == 0
    mine = sorted(tmp_path.rglob("game.tw-pddl"))
    assert len(mine) == 2
    for f in mine:
        rel = f.relative_to(tmp_path / "json_2.1.1")
        cached = generated["train"] / rel
        assert cached.read_bytes() == f.read_bytes(), rel
        assert (cached.parent / "traj_data.json").read_bytes() == (
            f.parent / "traj_data.json"
        ).read_bytes()
        game = json.loads(f.read_text())
        assert game["solvable"] is True and game["walkthrough"]
        assert "UNKNOWN GOAL" not in game["grammar"]
        assert set(game) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}


def test_generated_unseen_split_uses_only_alfred_unseen_scenes(generated: dict[str, Path]) -> None:
    from agentgym.environments.alfworld.generator import UNSEEN_SCENES

    for split in ("valid_unseen", "train", "valid_seen"):
        for traj_file in (generated[split] / split).rglob("traj_data.json"):
            scene = json.loads(traj_file.read_text())["scene"]["scene_num"]
            assert (scene in UNSEEN_SCENES) == (split == "valid_unseen"), (split, scene)
