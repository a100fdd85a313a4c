"""``agentgym replay``: a real tiny run's steps recomputed from its records match what it logged,
and a record changed after the run is caught."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import _small, tiny_model  # noqa: E402,F401  (the tiny model fixture)

from agentgym.cli import main  # noqa: E402
from agentgym.trainers.replay import format_table, replay  # noqa: E402
from agentgym.trainers.train import train  # noqa: E402


@pytest.fixture(scope="module")
def run3(tmp_path_factory, tiny_model):  # noqa: F811
    """Three steps, a checkpoint after each (KL and entropy terms on: the reference model and
    every loss statistic take part)."""
    out = tmp_path_factory.mktemp("replay") / "run"
    train(_small(out, tiny_model, steps=3, keep_checkpoints=0, mismatch_every=1))
    return out


@pytest.mark.parametrize("step", [2, 3])
def test_replay_recomputes_the_logged_loss_and_grad_norm(run3, step):
    result = replay(run3, step, rtol=1e-5, atol=1e-7)
    assert result.ok, format_table(result)
    by = {r.name: r for r in result.rows}
    for name in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "mismatch_abs"):
        assert by[name].logged is not None and by[name].replayed is not None, name
    assert by["loss"].logged != 0.0 and by["grad_norm"].logged > 0.0  # a live update
    assert result.episodes == 2 * 2  # groups x group size


def test_replay_restores_the_critic_and_the_minibatch_order(tmp_path, tiny_model):  # noqa: F811
    """Turn-level PPO (a critic piece whose state is in the checkpoint), several minibatches over
    two epochs (the order comes from the restored shuffle RNG; the logged grad norm is the last
    minibatch's)."""
    out = tmp_path / "run"
    cfg = dict(algo="ppo", minibatch_size=4, micro_batch_size=2, ppo_epochs=2, kl_coef=0.0)
    train(_small(out, tiny_model, steps=2, **cfg))
    result = replay(out, 2)
    assert result.ok, format_table(result)
    assert {r.name: r.logged for r in result.rows}["optimizer_steps"] > 2


def test_replay_cli_prints_the_table_and_exits_0(run3, capsys):
    assert main(["replay", str(run3), "--step", "3"]) == 0
    out = capsys.readouterr().out
    assert "loss/grad_norm" in out and "every statistic matches" in out


def test_a_changed_token_is_reported_as_a_mismatch(run3, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run3, copy)
    path = copy / "trajectories.jsonl"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["id"].startswith("s2-"):
            tokens = [u["info"].get("policy") or {} for u in rec["turns"]]
            ids = next(t["response_ids"] for t in tokens if t.get("response_ids"))
            ids[0] = (ids[0] + 1) % 100 + 3  # another token than the one sampled
            lines[i] = json.dumps(rec)
            break
    else:
        pytest.fail("no step-2 episode with tokens")
    path.write_text("\n".join(lines) + "\n")
    assert not replay(copy, 2).ok
    assert main(["replay", str(copy), "--step", "2"]) == 1
    out = capsys.readouterr().out
    assert "NO" in out and "differ" in out


def test_a_missing_checkpoint_names_the_fix(tmp_path, tiny_model):  # noqa: F811
    out = tmp_path / "run"
    train(_small(out, tiny_model, steps=2, save_every=0, eval_episodes=1))
    with pytest.raises(FileNotFoundError, match="--save-every 1") as err:
        replay(out, 2)
    assert "\n" not in str(err.value)
