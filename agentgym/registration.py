"""Environment specs, the registry, ``make`` and plugin loading.

``register(id="family/Name-v0", entry_point="module:Class", max_turns=..., kwargs=...)`` stores
an :class:`EnvSpec`. The entry point is a string resolved only in :func:`make`, so listing the
environments never imports Docker, a browser or a game engine.

Built-in families register themselves when ``agentgym.environments`` is imported (each family
package calls :func:`register`). Third-party packages expose a callable in the Python entry-point
group ``agentgym.environments``; :func:`load_plugins` (called by the CLI) runs them::

    # pyproject.toml of a plugin
    [project.entry-points."agentgym.environments"]
    myenvs = "myenvs:register_envs"   # a function that calls agentgym.register(...)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentgym.core import Env, EnvWrapper

__all__ = [
    "EnvSpec",
    "register",
    "make",
    "spec",
    "registry",
    "load_plugins",
    "ENTRY_POINT_GROUP",
    "UnknownEnvError",
    "check_kwargs",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentgym.environments"
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.:+-]+-v\d+$")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to build an environment.

    Attributes:
        id: ``family/Name-vN``; the family groups related envs, ``vN`` changes when behaviour does.
        entry_point: ``"package.module:Class"`` (or a callable) returning an :class:`Env`.
        max_turns: the turn limit; reaching it truncates the episode. ``None``: no limit.
        kwargs: keyword arguments passed to the entry point; :func:`make` overrides merge on top.
        description: one line shown by ``agentgym envs``.
        extras: the pip extra the family needs (``pip install 'agentgym[extras]'``).
        fast: steps take microseconds (pure Python, no engine or sandbox): a worker round trip
            would cost more than the step, so ``EnvPool(backend="auto")`` keeps such envs in the
            calling process.
        eval_split: the held-out split ``agentgym eval`` plays unless ``--split`` says otherwise
            (passed to the env as ``split=...``); ``None``: the env has no separate held-out
            split, or the spec already names the one it plays.
        tools: the env's actions as OpenAI function tools (:mod:`agentgym.tools`), presented
            to model-backed policies every turn unless an observation carries its own; a call
            arrives as the action ``{"tool": name, **arguments}`` (JSON). ``None``: the env
            declares no tools (actions are text).
    """

    id: str
    entry_point: str | Callable[..., Env]
    max_turns: int | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    extras: str | None = None
    fast: bool = False
    eval_split: str | None = None
    tools: tuple[dict[str, Any], ...] | None = None

    @property
    def family(self) -> str:
        return self.id.split("/", 1)[0]

    def make(self, **overrides: Any) -> Env:
        return make(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        ep = self.entry_point if isinstance(self.entry_point, str) else repr(self.entry_point)
        return {
            "id": self.id,
            "family": self.family,
            "entry_point": ep,
            "max_turns": self.max_turns,
            "kwargs": self.kwargs,
            "description": self.description,
            "extras": self.extras,
            "fast": self.fast,
            "eval_split": self.eval_split,
            "tools": list(self.tools) if self.tools is not None else None,
        }


class UnknownEnvError(KeyError):
    """``make`` was given an id nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


registry: dict[str, EnvSpec] = {}
_builtins_loaded = False
_plugins_loaded = False


def register(
    id: str,
    entry_point: str | Callable[..., Env],
    *,
    max_turns: int | None = None,
    kwargs: dict[str, Any] | None = None,
    description: str = "",
    extras: str | None = None,
    fast: bool = False,
    eval_split: str | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    override: bool = False,
) -> EnvSpec:
    """Register an environment under ``id`` (``family/Name-vN``) and return its spec.

    ``tools`` (OpenAI function schemas) are validated here, so a bad schema fails at import of
    the family rather than in the middle of a run.
    """
    if not _ID_RE.match(id):
        raise ValueError(f"invalid env id {id!r}: use 'family/Name-vN', e.g. 'textworld/Simple-v0'")
    if isinstance(entry_point, str) and ":" not in entry_point:
        raise ValueError(
            f"invalid entry_point {entry_point!r} for {id}: use 'package.module:ClassName'"
        )
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1 or None, got {max_turns} for {id}")
    if tools is not None:
        from agentgym.tools import validate_tools

        tools = validate_tools(tools, where=f"{id} tools")
    if id in registry and not override:
        raise ValueError(f"{id} is already registered; pass override=True to replace it")
    s = EnvSpec(
        id=id,
        entry_point=entry_point,
        max_turns=max_turns,
        kwargs=dict(kwargs or {}),
        description=description,
        extras=extras,
        fast=fast,
        eval_split=eval_split,
        tools=tuple(tools) if tools is not None else None,
    )
    registry[id] = s
    return s


def _load_builtins() -> None:
    """Import this package's own families: its ``agentgym.environments`` entry points (the
    core names no family module itself)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from agentgym.utils import entry_points_of

        for ep in entry_points_of(ENTRY_POINT_GROUP):
            if ep.value.split(":")[0].split(".")[0] == "agentgym":
                try:
                    ep.load()
                except ImportError as e:  # a family folder left out of the install
                    log.warning("could not load built-in families %r: %s", ep.value, e)


def load_plugins() -> list[str]:
    """Run every ``agentgym.environments`` entry point of installed packages; return their names.

    A plugin that fails to load is logged and skipped, so one broken package does not hide the
    others. Calling this twice is harmless.
    """
    global _plugins_loaded
    _load_builtins()
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.append(ep.name)
        if _plugins_loaded:
            continue
        try:
            hook = ep.load()
            if callable(hook):
                hook()
        except Exception as e:  # a broken plugin must not take the CLI down
            log.warning("could not load agentgym plugin %r (%s): %s", ep.name, ep.value, e)
    _plugins_loaded = True
    return names


def all_specs() -> list[EnvSpec]:
    """Every registered spec, sorted by id (built-ins included)."""
    _load_builtins()
    return [registry[k] for k in sorted(registry)]


def spec(id: str) -> EnvSpec:
    """The spec registered under ``id``; raises :class:`UnknownEnvError` saying how to fix it."""
    _load_builtins()
    if id in registry:
        return registry[id]
    close = difflib.get_close_matches(id, list(registry), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownEnvError(
        f"no environment registered as {id!r}.{hint} List them with `agentgym envs`; "
        "an env from a third-party package needs `agentgym.load_plugins()` first "
        f"(the package declares it in the {ENTRY_POINT_GROUP!r} entry-point group)."
    )


def _resolve(entry_point: str | Callable[..., Env], env_id: str, extras: str | None) -> Any:
    if callable(entry_point):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        fix = f" Install it with: pip install 'agentgym[{extras}]'." if extras else ""
        raise ImportError(f"{env_id} needs {e.name or module_name!r}: {e}.{fix}") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ImportError(f"{env_id}: module {module_name!r} has no {attr!r}") from e


def check_kwargs(id: str | EnvSpec, overrides: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ValueError` if ``overrides`` name a keyword the
    env's entry point does not take (``--env-kwarg bogus=1``), before any worker starts.

    Resolving the entry point imports its module (not the engine it drives, which is started in
    the constructor); an entry point taking ``**kwargs`` accepts every name.
    """
    s = id if isinstance(id, EnvSpec) else spec(id)
    factory = _resolve(s.entry_point, s.id, s.extras)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(overrides) - set(names) - {"max_turns"})
    if unknown:
        raise ValueError(
            f"{s.id} takes no env kwarg {', '.join(map(repr, unknown))} (it takes: "
            f"{', '.join(names) or 'none'}, max_turns): drop or rename it in --env-kwarg/--env-kwargs"
        )


def make(id: str | EnvSpec, **overrides: Any) -> Env:
    """Build the env registered as ``id``; ``overrides`` replace entries of the spec's kwargs.

    ``max_turns=N`` overrides the spec's turn limit. The returned env enforces the step API
    (turn limit -> ``truncated``; ``step`` after the end raises :class:`ResetNeeded`).
    """
    s = id if isinstance(id, EnvSpec) else spec(id)
    max_turns = overrides.pop("max_turns", s.max_turns)
    factory = _resolve(s.entry_point, s.id, s.extras)
    env = factory(**{**s.kwargs, **overrides})
    if not isinstance(env, Env):
        raise TypeError(f"entry point of {s.id} returned {type(env).__name__}, not an agentgym.Env")
    env.spec = dataclasses.replace(s, max_turns=max_turns, kwargs={**s.kwargs, **overrides})
    return EnvWrapper(env, max_turns=max_turns)
