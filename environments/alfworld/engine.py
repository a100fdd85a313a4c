"""A thin handle on TextWorld's PDDL engine as ALFWorld configures it.

``PddlGame`` loads one ``game.tw-pddl`` (a path or its parsed JSON) into
``textworld.envs.PddlEnv`` wrapped by ALFWorld's own ``AlfredDemangler`` (object ids such as
``mug_bar__plus_01_dot_00_bar_...`` become "mug 1") and ``AlfredInfos`` - the wrapper stack of
``alfworld.agents.environment.AlfredTWEnv`` without its gym layer, so one process can hold several
games and reach the true PDDL state (the ground facts) for anchors.

Every ``PddlEnv`` loads a private copy of Fast Downward's shared library (33 MB); one
``PddlGame`` therefore loads game after game into the same engine (:meth:`PddlGame.load`).
Resets re-translate the PDDL problem in TextWorld; the translation is memoised per problem text,
which turns a 1-6 s reset into a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PddlGame", "NOTHING_HAPPENS"]

#: What ALFWorld's engine answers to a command that is not admissible.
NOTHING_HAPPENS = "Nothing happens."


#: Predicates no action of ``alfred.pddl`` changes: a command template that only queries these
#: derives to the same text in every state, so its derivation can be cached.
_STATIC_PREDICATES = frozenset({"receptacleatlocation"})
_QUERY_RE = re.compile(r"\|([^}\]]*)\}")
_PRED_RE = re.compile(r"([a-z_]+)\(")


@functools.lru_cache(maxsize=256)
def _words(template: str) -> frozenset[str]:
    return frozenset(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", template))


@functools.lru_cache(maxsize=256)
def _state_independent(template: str) -> bool:
    if "#" in template:
        return False
    preds = {p for q in _QUERY_RE.findall(template) for p in _PRED_RE.findall(q)}
    return preds <= _STATIC_PREDICATES


def _cached_pddl_env_class(base: type) -> type:
    """``PddlEnv`` whose admissible-command derivation is memoised.

    TextWorld re-derives every applicable action's command template through its text grammar
    on every step (a parser run per action, ~20 ms each: 0.2-0.8 s per step in a kitchen).
    The derived text of a template that does not depend on the dynamic state is cached per
    (action, arguments); everything else takes TextWorld's own path, so the commands are the
    same strings TextWorld produces.
    """

    class CachedPddlEnv(base):  # type: ignore[misc, valid-type]
        _derive_cache: dict[tuple[Any, ...], str]

        def _gather_infos(self) -> None:
            cache = self.__dict__.setdefault("_derive_cache", {})
            logic = self._logic
            state = self._pddl_state
            self.state["command_templates"] = sorted(
                {action.template for action in logic.actions.values()}
            )
            self.state["won"] = state.check_goal()
            self.state["lost"] = False
            self.state["_entity_infos"] = dict(self._entity_infos)
            self.state["_facts"] = list(state.facts)
            if self.request_infos.facts:
                self.state["facts"] = list(map(self._get_human_readable_fact, self.state["_facts"]))
            self.state["last_action"] = None
            self.state["_last_action"] = self._last_action
            self.state["_valid_actions"] = list(state.all_applicable_actions())
            mapping = {k: info.name for k, info in self._entity_infos.items()}
            commands = []
            for action in self.state["_valid_actions"]:
                template = action.command_template
                # Only the arguments the template mentions matter (not e.g. the start location).
                words = _words(template)
                args = sorted(
                    (p.name, v.name) for p, v in action.mapping.items() if p.name in words
                )
                key = (action.name, template, tuple(args))
                derived = cache.get(key)
                if derived is None:
                    context = {
                        "state": state,
                        "facts": self.state["_facts"],
                        "variables": {
                            ph.name: self._entity_infos[var.name]
                            for ph, var in action.mapping.items()
                        },
                        "mapping": action.mapping,
                        "entity_infos": self._entity_infos,
                    }
                    derived = logic.grammar.derive(template, context)
                    if _state_independent(template):
                        cache[key] = derived
                action.command_template = derived
                commands.append(action.format_command(mapping))
            self.state["_valid_commands"] = commands
            self.state["admissible_commands"] = sorted(set(commands))
            if self.request_infos.moves:
                self.state["moves"] = self._moves
            if self.request_infos.policy_commands:
                self.state["policy_commands"] = state.replan(self._entity_infos)

    return CachedPddlEnv


@functools.lru_cache(maxsize=48)
def _pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
    import fast_downward

    return fast_downward.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)


class _CachingFastDownward:
    """Stands in for the ``fast_downward`` module inside TextWorld's PDDL logic: the
    PDDL -> SAS translation (0.5-3 s, done twice per reset) is memoised per problem text."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def pddl2sas(
        self, domain: str, problem: str, verbose: bool = False, optimize: bool = False
    ) -> Any:
        return _pddl2sas(domain, problem, verbose, optimize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def _cached_translation() -> Iterator[None]:
    import textworld.envs.pddl.logic as logic

    original = logic.fast_downward
    logic.fast_downward = _CachingFastDownward(original)
    try:
        yield
    finally:
        logic.fast_downward = original


class PddlGame:
    """One ALFWorld game in TextWorld's PDDL engine (``PddlEnv`` + ALFWorld's wrappers)."""

    def __init__(self, game: str | Path | Mapping[str, Any] | None = None) -> None:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        from textworld.envs import PddlEnv

        infos = textworld.EnvInfos(admissible_commands=True, won=True, facts=False)
        self._pddl = _cached_pddl_env_class(PddlEnv)(infos)
        self._env = AlfredInfos(AlfredDemangler(self._pddl, shuffle=False))
        self._closed = False
        self.state: Any = None
        self._plan: list[str] | None = None
        if game is not None:
            self.load(game)

    def load(self, game: str | Path | Mapping[str, Any]) -> None:
        """Load a ``game.tw-pddl`` (path or parsed JSON); the Fast Downward library is reused."""
        data = json.loads(Path(game).read_text()) if isinstance(game, (str, Path)) else dict(game)
        with _cached_translation():
            self._env.load(data)
        self.state = None

    # -- play ---------------------------------------------------------------------------------
    def reset(self) -> str:
        with _cached_translation():
            self.state = self._env.reset()
        self._plan: list[str] | None = None
        return str(self.state.feedback)

    def step(self, command: str) -> str:
        """Apply an admissible ``command``; return the feedback text."""
        self.state, _, _ = self._env.step(command)
        self._plan = None
        return str(self.state.feedback)

    @property
    def admissible_commands(self) -> list[str]:
        return list(self.state["admissible_commands"])

    @property
    def won(self) -> bool:
        return bool(self.state["won"])

    def facts(self) -> list[str]:
        """The ground facts of the true PDDL state, as sorted strings over internal ids."""
        return sorted(str(f) for f in self._pddl._pddl_state.facts)

    def propositions(self) -> list[tuple[str, tuple[str, ...]]]:
        """The true state's facts as ``(predicate, (arg ids...))`` tuples (lower case ids)."""
        return [(f.name, tuple(v.name for v in f.arguments)) for f in self._pddl._pddl_state.facts]

    @property
    def names(self) -> dict[str, str]:
        """Internal id -> the name the text uses ("mug 1")."""
        return {k: info.name for k, info in self._pddl._entity_infos.items()}

    def policy_commands(self) -> list[str]:
        """Fast Downward's plan from the current state, as commands (cached until the next step)."""
        if self._plan is None:
            self._plan = list(self._pddl._pddl_state.replan(self._pddl._entity_infos))
        return list(self._plan)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lib = getattr(self._pddl, "downward_lib", None)
        if lib is not None:
            # Free the planner's data but keep the library mapped: unloading it (dlclose, as
            # fast_downward.close_lib does) crashes the interpreter at exit.
            with contextlib.suppress(Exception):  # a half-loaded library must not hide an error
                lib.cleanup()
            self._pddl.downward_lib = None

    def __enter__(self) -> PddlGame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
