"""``check_env``: one call that tells an env author whether an env honours the step API.

Checks, each raising :class:`EnvCheckError` with what is wrong and how to fix it:

1. ``reset`` returns ``(Observation, dict)`` with ``info["task_id"]``;
2. seeded reset is deterministic: two resets with one seed give the same observation (text,
   task, anchor, admissible actions), and replaying the same actions gives the same results;
3. ``step`` returns ``(Observation, float, bool, bool, dict)`` with ``won``, ``score``, ``valid``;
4. an invalid action (gibberish) is answered with an observation and ``valid=False``, not an
   exception, and does not end the episode;
5. stepping after the episode ended raises :class:`~agentgym.core.ResetNeeded`;
6. ``close`` can be called twice;
7. declared tools are valid OpenAI function schemas (:func:`agentgym.tools.validate_tools`): the
   spec's ``tools`` and every observation's own ``tools`` seen during the checks.
"""

from __future__ import annotations

import random
from typing import Any

from agentgym.core import INFO_KEYS, Env, EnvWrapper, Observation, ResetNeeded
from agentgym.tools import validate_tools

__all__ = ["check_env", "EnvCheckError"]

INVALID_ACTION = "xyzzy plugh frobnicate the %%% qwerty"


class EnvCheckError(AssertionError):
    pass


def _fail(env: Env, msg: str) -> EnvCheckError:
    name = env.spec.id if env.spec else type(env.unwrapped).__name__
    return EnvCheckError(f"{name}: {msg}")


def _obs_key(obs: Observation) -> tuple[Any, ...]:
    return (obs.text, obs.task, obs.anchor, obs.admissible_actions)


def _check_tools(env: Env, tools: Any, where: str) -> None:
    """Raise :class:`EnvCheckError` when declared ``tools`` are not valid function schemas."""
    if tools is None:
        return
    try:
        validate_tools(tools, where=where)
    except ValueError as e:
        raise _fail(env, str(e)) from None


def _check_reset(env: Env, out: Any) -> tuple[Observation, dict[str, Any]]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise _fail(env, f"reset() must return (Observation, info), got {type(out).__name__}")
    obs, info = out
    if not isinstance(obs, Observation):
        raise _fail(env, f"reset() observation must be agentgym.Observation, got {type(obs)}")
    if not isinstance(info, dict) or "task_id" not in info:
        raise _fail(env, "reset() info must be a dict with 'task_id' (a stable task identifier)")
    if not isinstance(obs.text, str) or not obs.text:
        raise _fail(env, "reset() observation text must be a non-empty string")
    _check_tools(env, obs.tools, "reset() observation tools")
    return obs, info


def _check_step(env: Env, out: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
    if not (isinstance(out, tuple) and len(out) == 5):
        raise _fail(env, "step() must return (obs, reward, terminated, truncated, info)")
    obs, reward, term, trunc, info = out
    if not isinstance(obs, Observation):
        raise _fail(env, f"step() observation must be agentgym.Observation, got {type(obs)}")
    if not isinstance(reward, (int, float)):
        raise _fail(env, f"step() reward must be a number, got {type(reward).__name__}")
    if not isinstance(term, bool) or not isinstance(trunc, bool):
        raise _fail(env, "step() terminated and truncated must be bools")
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise _fail(env, f"step() info lacks {missing}; every env reports {list(INFO_KEYS)}")
    _check_tools(env, obs.tools, "step() observation tools")
    return out


def _pick_actions(obs: Observation, rng: random.Random, n: int) -> list[str]:
    if obs.admissible_actions:
        return [rng.choice(obs.admissible_actions) for _ in range(n)]
    return ["look"] * n


def check_env(env: Env, *, seed: int = 123, n_steps: int = 5, max_episode_steps: int = 500) -> None:
    """Run the conformance checks on ``env`` (built by :func:`agentgym.make`).

    The env is left closed. Raises :class:`EnvCheckError` on the first violation.
    """
    if not isinstance(env, EnvWrapper):
        # Plain Env instances get the same enforcement make() applies.
        env = EnvWrapper(env, max_turns=None)
    try:
        # 7: the spec's tools (observations' own are checked with each reset and step).
        if env.spec is not None:
            _check_tools(env, env.spec.tools, "spec tools")
        # 1-2: seeded reset determinism, including the dynamics of a short replay.
        obs1, info1 = _check_reset(env, env.reset(seed=seed))
        rng = random.Random(seed)
        actions = _pick_actions(obs1, rng, n_steps)
        trace1 = []
        for a in actions:
            o, r, te, tr, _ = _check_step(env, env.step(a))
            trace1.append((_obs_key(o), r, te, tr))
            if te or tr:
                break
        obs2, info2 = _check_reset(env, env.reset(seed=seed))
        if _obs_key(obs1) != _obs_key(obs2) or info1["task_id"] != info2["task_id"]:
            raise _fail(env, "reset(seed=s) twice gave different first observations or tasks")
        trace2 = []
        for a in actions[: len(trace1)]:
            o, r, te, tr, _ = env.step(a)
            trace2.append((_obs_key(o), r, te, tr))
        if trace1 != trace2:
            raise _fail(env, "replaying the same actions after reset(seed=s) diverged")

        # 4: an invalid action is an observation, not an exception, and not the end.
        env.reset(seed=seed)
        obs, r, te, tr, info = _check_step(env, env.step(INVALID_ACTION))
        if info["valid"]:
            raise _fail(env, f"the gibberish action {INVALID_ACTION!r} was reported valid=True")
        if te:
            raise _fail(env, "an invalid action terminated the episode; answer it with a message")
        if not obs.text:
            raise _fail(env, "an invalid action must be answered with an explanatory observation")

        # 5: step after the end raises ResetNeeded.
        env.reset(seed=seed)
        done = False
        expert = _has_expert(env)
        for _ in range(max_episode_steps):
            a = env.expert_action() if expert else None
            if a is None:
                a = _pick_actions(obs, rng, 1)[0] if obs.admissible_actions else "look"
            obs, r, te, tr, info = env.step(a)
            if te or tr:
                done = True
                break
        if done:
            try:
                env.step("look")
            except ResetNeeded:
                pass
            else:
                raise _fail(env, "step() after the episode ended did not raise ResetNeeded")
    finally:
        # 6: close twice.
        env.close()
    try:
        env.close()
    except Exception as e:
        raise _fail(env, f"close() is not idempotent: second call raised {e!r}") from e


def _has_expert(env: Env) -> bool:
    try:
        env.expert_action()
    except NotImplementedError:
        return False
    return True
