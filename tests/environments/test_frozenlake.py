"""FrozenLake: every spec passes check_env; generation, splits, expert, holes, edges, slipping,
anchors, rewards, image."""

from __future__ import annotations

import random
import zlib

import pytest

import agentgym
from agentgym.checker import check_env
from agentgym.environments.frozenlake.env import (
    MOVES,
    FrozenLakeEnv,
    Lake,
    generate,
    shortest_path,
)

SPECS = sorted(s.id for s in agentgym.all_specs() if s.family == "frozenlake")


def test_family_registers_its_specs() -> None:
    assert {
        "frozenlake/FrozenLake4x4-v0",
        "frozenlake/FrozenLake6x6-v0",
        "frozenlake/FrozenLake8x8-v0",
        "frozenlake/FrozenLake4x4Slippery-v0",
        "frozenlake/FrozenLake4x4Local-v0",
    } <= set(SPECS)


@pytest.mark.parametrize("env_id", SPECS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_check_env_every_spec(env_id: str, split: str) -> None:
    check_env(agentgym.make(env_id, split=split))


def _walk(lake: Lake, moves: list[str]) -> tuple[int, int]:
    cell = lake.start
    for m in moves:
        dr, dc = MOVES[m]
        cell = (cell[0] + dr, cell[1] + dc)
        assert lake.inside(cell) and cell not in lake.holes
    return cell


def test_shortest_path_is_safe_shortest_and_none_when_cut_off() -> None:
    lake = Lake(3, 3, frozenset({(0, 1), (1, 1)}), (0, 0), (0, 2))
    path = shortest_path(lake, lake.start)
    assert path == ["down", "down", "right", "right", "up", "up"]
    assert _walk(lake, path) == lake.goal
    walled = Lake(3, 3, frozenset({(0, 1), (1, 1), (2, 1)}), (0, 0), (0, 2))
    assert shortest_path(walled, walled.start) is None
    assert shortest_path(lake, lake.goal) == []


@pytest.mark.parametrize("env_id", SPECS)
def test_generated_lakes_respect_the_path_range_and_the_expert_walks_them(env_id: str) -> None:
    env = agentgym.make(env_id, split="test", image=False)
    kw = agentgym.spec(env_id).kwargs
    slippery = kw.get("slip", 0.0) > 0
    won = 0
    for seed in range(40):
        env.reset(seed=seed)
        lake = env.unwrapped.lake
        n = len(shortest_path(lake, lake.start) or [])
        assert kw["min_path"] <= n <= kw["max_path"]
        turns = 0
        while True:
            _, r, term, trunc, info = env.step(env.expert_action())
            turns += 1
            if term or trunc:
                break
        won += info["won"]
        if not slippery:  # on plain ice the expert walks the shortest path
            assert info["won"] and turns == n and r == 1.0
    if slippery:
        assert 0 < won < 40  # sliding loses some lakes even for the expert


def test_splits_are_disjoint_lake_sets() -> None:
    train = {generate(s, "train", height=4, width=4).key() for s in range(3000)}
    test = {generate(s, "test", height=4, width=4).key() for s in range(3000)}
    assert not train & test
    assert len(train) > 1000 and len(test) > 1000  # thousands of distinct lakes per split


def test_seeded_reset_is_deterministic_and_tasks_replay_by_id() -> None:
    a, b = FrozenLakeEnv(image=False), FrozenLakeEnv(image=False)
    oa, ia = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    assert oa == ob
    oc, ic = b.reset(options={"task": ia["task_id"]})
    assert oc == oa and ic["task_id"] == ia["task_id"]
    with pytest.raises(ValueError, match="task id like"):
        b.reset(options={"task": "bogus"})


def test_anchor_is_the_state_not_the_path() -> None:
    env = FrozenLakeEnv(height=4, width=4, hole_frac=0.0, image=False)
    obs, _ = env.reset(seed=1)
    start = obs.anchor
    first = next(m for m in ("right", "left", "down", "up") if m in obs.admissible_actions)
    back = {"right": "left", "left": "right", "down": "up", "up": "down"}[first]
    o1, *_ = env.step(first)
    assert o1.anchor != start
    o2, *_ = env.step(back)
    assert o2.anchor == start  # the same cell by another path: the same anchor


def test_edge_move_is_invalid_and_a_hole_ends_the_episode() -> None:
    env = FrozenLakeEnv(image=False)
    env.reset(seed=0)
    env.lake = Lake(3, 3, frozenset({(1, 1)}), (0, 0), (2, 2))
    env.agent = (0, 0)
    env._paths = {}
    env._obs = env._observe("A new lake.")
    obs, r, term, _, info = env.step("up")
    assert not info["valid"] and r == 0.0 and not term and env.agent == (0, 0)
    assert obs.text.startswith("You cannot move up: that is the edge of the lake.")
    obs, r, term, _, info = env.step("<b>jump</b>")
    assert not info["valid"] and "is not a move" in obs.text and not term
    env.step("right")
    obs, r, term, _, info = env.step("down")  # (1, 1) is a hole
    assert term and info["lost"] and not info["won"] and r == 0.0
    assert "fell into a hole" in obs.text and obs.admissible_actions == ()
    assert env.expert_action() is None


def test_observation_spells_out_the_goal_and_the_neighbours() -> None:
    env = FrozenLakeEnv(image=False)
    env.reset(seed=0)
    env.lake = Lake(3, 3, frozenset({(1, 0)}), (0, 0), (2, 2))
    env.agent = (0, 0)
    env._paths = {}
    obs = env._observe("A new lake.")
    assert obs.text.splitlines() == [
        "A new lake.",
        "P _ _",
        "H _ _",
        "_ _ G",
        "You: row 1, col 1.",
        "Goal: 2 down, 2 right.",
        "Around you: up edge, down hole, left edge, right ice.",
    ]
    assert obs.admissible_actions == ("down", "right")
    assert FrozenLakeEnv(image=False, render="grid").reset(seed=0)[0].text.count("\n") == 6
    env.render_mode = "local"  # the same state without the grid and the agent's cell
    assert env._observe("A new lake.").text.splitlines() == [
        "A new lake.",
        "Goal: 2 down, 2 right.",
        "Around you: up edge, down hole, left edge, right ice.",
    ]
    local = FrozenLakeEnv(image=False, render="local")
    local.reset(seed=0)
    obs, *_ = local.step("jump")  # an invalid move keeps the state part of a local view
    assert obs.text.splitlines()[1:] == local._observe("x").text.splitlines()[1:]


def test_slipping_is_replayed_exactly_from_the_seed() -> None:
    def play(seed: int) -> list[str]:
        env = FrozenLakeEnv(height=4, width=4, slip=0.5, hole_frac=0.0, max_path=6, image=False)
        env.reset(seed=seed)
        texts = []
        for m in ["right", "down", "left", "up"] * 3:
            obs, _, term, _, _ = env.step(m)
            texts.append(obs.text)
            if term:
                break
        return texts

    runs = [play(s) for s in range(6)]
    assert runs == [play(s) for s in range(6)]
    assert any("slid" in t for run in runs for t in run)


def test_progress_reward_is_shaping_by_the_path_length() -> None:
    env = FrozenLakeEnv(reward="progress", image=False)
    env.reset(seed=4)
    n = env._path_len
    total = 0.0
    while True:
        _, r, term, _, info = env.step(env.expert_action())
        assert r == pytest.approx(1.0 / n)
        total += r
        if term:
            break
    assert info["won"] and total == pytest.approx(1.0)
    # a wasted turn costs one move; a hole takes the progress back and one move more
    env.reset(seed=4)
    _, r, *_ = env.step("sideways")
    assert r == pytest.approx(-1.0 / n)
    env.reset(seed=0)
    env.lake = Lake(3, 3, frozenset({(1, 1)}), (0, 0), (2, 2))
    env.agent, env._paths, env._path_len, env._return = (0, 0), {}, 4, 0.0
    env._obs = env._observe("A new lake.")
    _, r1, *_ = env.step("right")
    _, r2, term, _, _ = env.step("down")
    assert term and r1 == pytest.approx(0.25) and r1 + r2 == pytest.approx(-0.25)


def test_image_is_a_valid_png_of_the_state() -> None:
    env = FrozenLakeEnv(height=4, width=5, cell_px=8)
    obs, _ = env.reset(seed=2)
    png = obs.image
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (w, h) == (40, 32)
    idat = png.index(b"IDAT")
    size = int.from_bytes(png[idat - 4 : idat], "big")
    assert len(zlib.decompress(png[idat + 4 : idat + 4 + size])) == h * (1 + 3 * w)
    o2, *_ = env.step(obs.admissible_actions[0])
    assert o2.image != png or o2.text.startswith("You cannot")
    assert FrozenLakeEnv(image=False).reset(seed=2)[0].image is None


def test_random_play_never_crashes_and_rewards_only_wins() -> None:
    env = agentgym.make("frozenlake/FrozenLake6x6-v0", image=False)
    rng = random.Random(0)
    junk = ["", "UP", "jump", "<action>left</action>", "move left", "east", "42"]
    for seed in range(40):
        env.reset(seed=seed)
        while True:
            _, r, term, trunc, info = env.step(rng.choice(list(MOVES) + junk))
            assert r in (0.0, 1.0) and (r == 1.0) == (term and info["won"])
            if term or trunc:
                break


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="split"):
        FrozenLakeEnv(split="valid")
    with pytest.raises(ValueError, match="slip"):
        FrozenLakeEnv(slip=1.0)
    with pytest.raises(ValueError, match="render must be one of grid, grid\\+coords, local"):
        FrozenLakeEnv(render="map")
    with pytest.raises(ValueError, match="hole_frac"):
        FrozenLakeEnv(hole_frac=1.5)
    with pytest.raises(RuntimeError, match="widen the path range"):
        FrozenLakeEnv(height=2, width=2, min_path=5, max_path=9).reset(seed=0)
