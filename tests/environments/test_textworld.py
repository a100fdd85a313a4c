"""TextWorld family on the real engine: generation, caching, the step API, experts, anchors.

All games are generated once per session into a temporary ``AGENTGYM_CACHE`` (one parallel batch
at the start, ~1 minute on 2 cores); every test then reads them from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("textworld")

import agentgym  # noqa: E402
from agentgym.checker import check_env  # noqa: E402
from agentgym.policies import ExpertPolicy, RandomPolicy  # noqa: E402
from agentgym.pool import EnvPool  # noqa: E402
from agentgym.rollout import rollout, summarize  # noqa: E402

TRAIN_ID = "textworld/Custom-w2-o3-q4-v0"
N_TRAIN = 8  # the registered default of TRAIN_ID
N_TEST = 2


def _tw_specs() -> list[str]:
    return [s.id for s in agentgym.all_specs() if s.family == "textworld"]


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache holding every game the tests play, generated in one parallel batch."""
    from agentgym.environments.textworld.games import game_seeds, generate_many, parse_preset

    root = tmp_path_factory.mktemp("agentgym-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGENTGYM_CACHE", str(root))
    jobs = [(parse_preset("w2-o3-q4"), s) for s in game_seeds("train", N_TRAIN)]
    jobs += [(parse_preset("w2-o3-q4", split="test"), s) for s in game_seeds("test", N_TEST)]
    for env_id in _tw_specs():  # one game of every other registered preset, for check_env
        preset = agentgym.spec(env_id).kwargs["preset"]
        if preset != "w2-o3-q4":
            jobs.append((parse_preset(preset), 0))
    # Heaviest (cooking) first so the two workers finish together.
    jobs.sort(key=lambda j: j[0].kind != "tw-cooking")
    generate_many(jobs, workers=2)
    yield root
    mp.undo()


def _expert_episode(env: agentgym.Env, seed: int) -> list[tuple[str, float, dict]]:
    env.reset(seed=seed)
    out = []
    while True:
        a = env.expert_action()
        assert a is not None, "expert has no move before the game ended"
        _, r, te, tr, info = env.step(a)
        out.append((a, r, info))
        if te or tr:
            return out


# -- the step API --------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", _tw_specs())
def test_check_env_every_spec(tw_cache: Path, env_id: str) -> None:
    check_env(agentgym.make(env_id, num_games=1))


def test_reset_observation_is_clean(tw_cache: Path) -> None:
    with agentgym.make(TRAIN_ID) as env:
        for seed in range(N_TRAIN):
            obs, info = env.reset(seed=seed)
            assert info["task_id"] == f"w2-o3-q4/train/seed{seed}"
            assert obs.task and obs.task not in obs.text  # the objective lives in `task`
            assert obs.text.startswith("-= ") and "=-" in obs.text  # the room title is kept
            assert "$$" not in obs.text and "\n>" not in obs.text  # no banner, no prompt
            assert list(obs.admissible_actions) == sorted(obs.admissible_actions)
            assert obs.anchor.startswith("tw:")
        # The final message keeps the result and loses Inform's restart menu.
        env.reset(seed=0)
        while True:
            obs, _, te, tr, info = env.step(env.expert_action())
            if te or tr:
                break
        assert info["won"] and obs.admissible_actions == ()
        assert "*** The End ***" in obs.text and "You scored 1 out of a possible 1" in obs.text
        assert "RESTART" not in obs.text and "  " not in obs.text


def test_seed_and_task_selection(tw_cache: Path) -> None:
    with agentgym.make(TRAIN_ID) as env:
        a, ia = env.reset(seed=3)
        b, ib = env.reset(seed=3 + N_TRAIN)
        c, ic = env.reset(options={"task": 3})
        d, idd = env.reset(options={"task": "w2-o3-q4/train/seed3"})
        assert ia["task_id"] == ib["task_id"] == ic["task_id"] == idd["task_id"]
        assert a == b == c == d
        assert env.reset(seed=4)[1]["task_id"] != ia["task_id"]
        with pytest.raises(ValueError, match="unknown task"):
            env.reset(options={"task": "nope"})


def test_invalid_actions_do_not_step_the_engine(tw_cache: Path) -> None:
    with agentgym.make(TRAIN_ID) as env:
        obs0, _ = env.reset(seed=1)
        for bad in ["jump", "", "take the moon", "<action>look</action>"]:
            obs, r, te, tr, info = env.step(bad)
            assert info["valid"] is False and r == 0.0 and not te and not tr
            assert "not a valid action" in obs.text or "empty" in obs.text
            assert obs.anchor == obs0.anchor
            assert obs.admissible_actions == obs0.admissible_actions
        # Case, spacing and a trailing period are forgiven.
        first = env.expert_action()
        assert first is not None
        obs, _, _, _, info = env.step("  " + first.upper().replace(" ", "   ") + ". ")
        assert info["valid"] is True and obs.anchor != obs0.anchor
        while not info["won"]:
            _, _, te, _, info = env.step(env.expert_action() or "look")
            assert te or not info["won"]
        assert te


def test_sparse_and_dense_rewards(tw_cache: Path) -> None:
    dense = agentgym.make("textworld/Simple-v0", num_games=1, reward="dense")
    sparse = agentgym.make("textworld/Simple-v0", num_games=1, reward="sparse")
    with dense, sparse:
        d = _expert_episode(dense, 0)
        s = _expert_episode(sparse, 0)
    assert [a for a, _, _ in d] == [a for a, _, _ in s]
    assert d[-1][2]["won"] and s[-1][2]["won"]
    max_score = d[-1][2]["max_score"]
    assert max_score > 1 and d[-1][2]["score"] == max_score
    assert sum(r for _, r, _ in d) == pytest.approx(1.0)
    assert sum(r > 0 for _, r, _ in d) == max_score  # a point per scored step
    assert [r for _, r, _ in s] == [0.0] * (len(s) - 1) + [1.0]


# -- experts and baselines through the pool --------------------------------------------------------
def test_expert_wins_every_game_random_mostly_does_not(tw_cache: Path) -> None:
    with EnvPool(TRAIN_ID, num_envs=4, num_workers=2) as pool:
        expert = rollout(pool, ExpertPolicy(), num_groups=N_TRAIN, group_size=2, seed=0)
        rand = rollout(pool, RandomPolicy(seed=0), num_groups=N_TRAIN, group_size=4, seed=0)
    es, rs = summarize(expert), summarize(rand)
    assert es.episodes == 2 * N_TRAIN and es.success_rate == 1.0
    assert {t.task for t in expert} == {f"w2-o3-q4/train/seed{i}" for i in range(N_TRAIN)}
    assert es.mean_turns <= 6  # short walkthroughs: an easily learnable expert
    assert all(not t.truncated for t in expert)
    assert rs.episodes == 4 * N_TRAIN and rs.success_rate < 0.5
    assert any(t.truncated for t in rand)  # random play runs into the turn limit


# -- anchors ---------------------------------------------------------------------------------------
def _facts(env: agentgym.Env) -> tuple:
    st = env.unwrapped._state
    return (tuple(sorted(map(str, st.facts))), st.score)


def test_anchors_identify_states(tw_cache: Path) -> None:
    """Equal anchors exactly when the world facts and score are equal, across action orders."""
    checked = same = 0
    with agentgym.make(TRAIN_ID, max_turns=None) as env:
        for seed in range(N_TRAIN):
            obs0, _ = env.reset(seed=seed)
            # Look/examine/inventory change nothing: same state, same anchor.
            for a in obs0.admissible_actions:
                if a.split()[0] in ("look", "examine", "inventory"):
                    env.reset(seed=seed)
                    assert env.step(a)[0].anchor == obs0.anchor
            acts = [
                a
                for a in obs0.admissible_actions
                if a.split()[0] not in ("look", "examine", "inventory")
            ]
            for i, a in enumerate(acts):
                for b in acts[i + 1 :]:
                    ends = []
                    for order in ((a, b), (b, a)):
                        env.reset(seed=seed)
                        obs = None
                        for x in order:
                            obs, _, te, _, info = env.step(x)
                            if not info["valid"] or te:
                                obs = None
                                break
                        if obs is not None:
                            ends.append((obs.anchor, _facts(env)))
                    if len(ends) == 2:
                        checked += 1
                        (a1, f1), (a2, f2) = ends
                        assert (a1 == a2) == (f1 == f2)
                        same += a1 == a2
            # Doing then undoing returns to the start anchor; the middle state differs.
            for a in acts:
                undo = {"open": "close", "close": "open"}.get(a.split()[0])
                if undo is None:
                    continue
                env.reset(seed=seed)
                mid = env.step(a)[0]
                back, _, _, _, info = env.step(undo + a[len(a.split()[0]) :])
                if info["valid"]:
                    assert mid.anchor != obs0.anchor and back.anchor == obs0.anchor
    assert checked > 0 and same > 0, "no commuting action pair found in the game set"


def test_anchor_differs_between_games(tw_cache: Path) -> None:
    with agentgym.make(TRAIN_ID) as env:
        anchors = {env.reset(seed=s)[0].anchor for s in range(N_TRAIN)}
    assert len(anchors) == N_TRAIN


# -- game sets: splits, determinism, caching, user games ------------------------------------------
def _content_key(z8: Path) -> str:
    game = json.loads(z8.with_suffix(".json").read_text())
    blob = json.dumps([game["objective"], game["metadata"].get("walkthrough"), game["world"]])
    return hashlib.sha256(blob.encode()).hexdigest()


def test_held_out_split_is_disjoint(tw_cache: Path) -> None:
    train = agentgym.make(TRAIN_ID)
    test = agentgym.make(TRAIN_ID, split="test", num_games=N_TEST)
    with train, test:
        assert not set(train.task_ids) & set(test.task_ids)
        assert not {_content_key(p) for p in train.games} & {_content_key(p) for p in test.games}
        assert len({_content_key(p) for p in train.games}) == N_TRAIN  # no duplicate games
        _, info = test.reset(seed=0)
        assert info["task_id"].startswith("w2-o3-q4/test/seed")
        assert _expert_episode(test, 1)[-1][2]["won"]


def test_generation_is_deterministic_and_safe_concurrently(tw_cache: Path, tmp_path: Path) -> None:
    """Two processes racing to generate one game into a fresh cache produce one game, byte for
    byte the same as the session's copy of that seed."""
    from agentgym.environments.textworld.games import game_path, job_spec, parse_preset

    preset = parse_preset("w2-o3-q4")
    cmd = [sys.executable, "-m", "agentgym.environments.textworld.games", "--root", str(tmp_path)]
    procs = [subprocess.Popen([*cmd, job_spec(preset, 0)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    fresh, cached = game_path(preset, 0, tmp_path), game_path(preset, 0)
    assert fresh.read_bytes() == cached.read_bytes()
    assert fresh.with_suffix(".json").read_bytes() == cached.with_suffix(".json").read_bytes()
    assert sorted(p.name for p in fresh.parent.iterdir() if not p.name.endswith(".lock")) == [
        "seed0.json",
        "seed0.z8",
    ]  # no temp folders left behind
    assert cached.read_bytes()[0x12:0x18] == b"000000"  # the fixed serial number


def test_bundled_games_unpack_instead_of_compiling(
    tw_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shipped archive fills a fresh cache with the same bytes, without running the compiler;
    seeds the archive lacks are still generated."""
    from agentgym.environments.textworld import games

    preset = games.parse_preset("w2-o3-q4")
    archive = games.write_bundle(preset, [0, 1], tmp_path / "bundles", workers=1)
    assert archive.name == f"{preset.key}.tar.xz"
    monkeypatch.setattr(games, "BUNDLE_DIR", tmp_path / "bundles")

    def no_compiling(*a: object, **k: object) -> None:
        raise AssertionError("compiled a game the archive holds")

    monkeypatch.setattr(games, "_build", no_compiling)
    fresh = tmp_path / "cache"
    paths = games.generate_many([(preset, 1), (preset, 0)], workers=1, root=fresh)
    for seed, path in zip([1, 0], paths):
        cached = games.game_path(preset, seed)
        assert path.read_bytes() == cached.read_bytes()
        assert path.with_suffix(".json").read_bytes() == cached.with_suffix(".json").read_bytes()
    assert games.unpack_bundle(preset, [0, 1], fresh) == 0  # nothing left to add
    with pytest.raises(AssertionError, match="compiled a game the archive holds"):
        games.generate_many([(preset, 2)], workers=1, root=fresh)  # not in the archive
    env = agentgym.make(
        "textworld/Custom-w2-o3-q4-v0", game_files=[str(p) for p in paths], max_turns=20
    )
    with env:
        assert all(info["won"] for *_, info in [_expert_episode(env, 0)[-1]])


def test_cli_generate_and_games_dir(tw_cache: Path, tmp_path: Path, capsys) -> None:
    from agentgym.cli import main

    out = tmp_path / "games"
    assert (
        main(
            [
                "textworld",
                "generate",
                "--preset",
                "w2-o3-q4",
                "--n",
                "2",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["games"] == 2 and len(summary["files"]) == 2  # cached: no regeneration
    with agentgym.make(TRAIN_ID, games_dir=str(out)) as env:
        assert env.num_games == 2 and env.task_ids[0] == "w2-o3-q4-train-seed0"
        assert _expert_episode(env, 1)[-1][2]["won"]
    files = sorted(map(str, out.glob("*.z8")))
    with agentgym.make(TRAIN_ID, game_files=files[:1]) as env:
        assert env.num_games == 1
        check_env(env)
    ulx = tmp_path / "old.ulx"
    ulx.write_bytes(b"")
    with pytest.raises(ValueError, match="Glulx"):
        agentgym.make(TRAIN_ID, game_files=[str(ulx)])
    lonely = tmp_path / "lonely.z8"
    shutil.copyfile(files[0], lonely)
    with pytest.raises(FileNotFoundError, match="lonely.json"):
        agentgym.make(TRAIN_ID, game_files=[str(lonely)])


def test_bad_arguments_say_how_to_fix(tw_cache: Path) -> None:
    from agentgym.environments.textworld.games import parse_preset

    with pytest.raises(ValueError, match="unknown TextWorld preset"):
        parse_preset("huge-world")
    with pytest.raises(ValueError, match="1, 6, 9 or 12"):
        parse_preset("cooking-r1-t1-g5")
    with pytest.raises(ValueError, match="reward must be"):
        agentgym.make(TRAIN_ID, reward="shaped")
    assert os.environ["AGENTGYM_CACHE"] == str(tw_cache)
