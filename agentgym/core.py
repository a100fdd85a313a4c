"""The step API every agentgym environment implements.

An environment is a text game: ``reset`` returns the first :class:`Observation`, ``step`` takes
the agent's action as a string and returns the next observation, a reward and two end flags.
The contract mirrors Gymnasium's ``Env`` so that people who know it know this one:

* ``reset(*, seed=None, options=None) -> (obs, info)``
* ``step(action: str) -> (obs, reward, terminated, truncated, info)``
* ``close()`` is idempotent and the env is a context manager.

``terminated`` means the episode ended inside the environment (won, lost, bought, submitted).
``truncated`` means it was cut from outside (the turn limit of the spec, a crashed worker).
Credit assignment needs the difference: a truncated episode has no final outcome.

Bad actions are never exceptions. An action the environment cannot parse or execute returns an
observation that says what was wrong, with ``info["valid"] = False``.

An env may declare its actions as tools (OpenAI function schemas): on its spec
(``register(..., tools=...)``) and, per turn, on an observation. A tool call then arrives as the
JSON action ``{"tool": name, **arguments}``; see :mod:`agentgym.tools`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentgym.registration import EnvSpec

__all__ = ["Env", "Observation", "StepResult", "ResetNeeded", "INFO_KEYS"]

#: Keys that every ``info`` dict returned by ``step`` carries.
#: ``won``: the task was accomplished; ``score``: the raw env score (game points, purchase reward,
#: tests passed ...); ``valid``: whether the action was understood and executed.
INFO_KEYS = ("won", "score", "valid")


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the agent sees after a reset or a step.

    Attributes:
        text: the text the agent reads (room description, page text, tool output).
        task: the goal of the episode in natural language ("Your task is to: ...").
        admissible_actions: the actions the env accepts now, when the env knows them; ``None``
            when the action space is open (shell commands, free search queries).
        anchor: a canonical key of the true environment state. Two observations with equal
            anchors come from identical states, so GiGPO can group them across trajectories.
            Each env documents what it puts here; ``""`` means "no anchor" (never grouped).
        image: an optional PNG screenshot (GUI envs).
        tools: this turn's tools (OpenAI function schemas, :mod:`agentgym.tools`), overriding
            the spec's ``tools`` for this turn; ``()``: no tools this turn; ``None`` (default):
            the spec's tools apply.
    """

    text: str
    task: str = ""
    admissible_actions: tuple[str, ...] | None = None
    anchor: str = ""
    image: bytes | None = None
    tools: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "task": self.task, "anchor": self.anchor}
        d["admissible_actions"] = (
            list(self.admissible_actions) if self.admissible_actions is not None else None
        )
        d["has_image"] = self.image is not None
        if self.tools is not None:
            d["tools"] = list(self.tools)
        return d


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One ``step`` outcome as a record (what env pools return per env)."""

    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class ResetNeeded(RuntimeError):
    """Raised when ``step`` is called before ``reset`` or after the episode ended.

    This is a bug in the caller (a rollout loop), not bad agent output, so it is an exception.
    """


class Env(abc.ABC):
    """Base class of all environments.

    Subclasses implement :meth:`reset` and :meth:`step`, and may implement :meth:`expert_action`
    (an oracle's next action, used for SFT data and tests) and :meth:`close`.

    Task selection: ``reset(seed=s)`` picks the task and the initial state deterministically from
    ``s``, so G copies reset with one seed play the same task (a GRPO/GiGPO group).
    ``options={"task": ...}`` picks a task explicitly (an index or an env-specific task id).
    """

    spec: EnvSpec | None = None
    metadata: dict[str, Any] = {}

    @abc.abstractmethod
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start a new episode; return the first observation and an info dict.

        ``info`` carries at least ``task_id`` (a stable identifier of the chosen task).
        """

    @abc.abstractmethod
    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Apply ``action``; return ``(obs, reward, terminated, truncated, info)``.

        ``info`` carries at least :data:`INFO_KEYS`. An invalid action is not an error: it
        returns an observation that explains the problem and ``info["valid"] = False``.
        """

    def expert_action(self) -> str | None:
        """The next action of an expert (walkthrough, planner), or ``None`` if it has none."""
        raise NotImplementedError(f"{type(self).__name__} has no expert")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources. Safe to call more than once."""

    @property
    def unwrapped(self) -> Env:
        return self

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()


class EnvWrapper(Env):
    """Enforces the step API around an env built by :func:`agentgym.make`.

    * counts turns and sets ``truncated=True`` at the spec's ``max_turns`` (never ``terminated``);
    * raises :class:`ResetNeeded` on ``step`` before ``reset`` or after the episode ended;
    * fills missing :data:`INFO_KEYS` so every env reports them;
    * makes ``close`` idempotent.
    """

    def __init__(self, env: Env, max_turns: int | None = None) -> None:
        self.env = env
        self.max_turns = max_turns
        self.spec = env.spec
        self.turn = 0
        self._needs_reset = True
        self._closed = False

    @property
    def unwrapped(self) -> Env:
        return self.env.unwrapped

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.turn = 0
        self._needs_reset = False
        return obs, info

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise ResetNeeded(
                "step() called before reset() or after the episode ended; call env.reset() first"
            )
        if not isinstance(action, str):
            raise TypeError(f"actions are strings, got {type(action).__name__}: {action!r}")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.turn += 1
        info.setdefault("won", False)
        info.setdefault("score", 0.0)
        info.setdefault("valid", True)
        if not terminated and self.max_turns is not None and self.turn >= self.max_turns:
            truncated = True
            info["turn_limit"] = True
        if terminated or truncated:
            self._needs_reset = True
        return obs, float(reward), bool(terminated), bool(truncated), info

    def expert_action(self) -> str | None:
        return self.env.expert_action()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes the wrapper lacks: expose env-specific extras
        # (e.g. ``tasks``) without re-declaring them.
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)
