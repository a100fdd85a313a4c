"""``WebShopTextEnv``: WebShop in text mode (``webshop/Text-v0`` and friends).

The agent reads WebShop's simple text pages (visible strings joined by ``[SEP]``), acts with
``search[query]`` / ``click[element]`` and is rewarded once, on ``click[buy now]``, with the
WebShop purchase reward (:mod:`.reward`). ``won`` means reward 1.0.

Observation:

* ``text``: the page (or, after an invalid action, the reason followed by the unchanged page);
* ``task``: the instruction ("i need a ... , and price lower than 40.00 dollars");
* ``admissible_actions``: ``search[<your query>]`` on the search page (any query is accepted),
  else ``click[...]`` for every clickable of the page, like WebShop's ``get_available_actions``;
* ``anchor``: ``<goal id>|<page type>|q=<query>|p=<result page>|item=<asin>|opts=<name=value;...>``
  (the search page is ``<goal id>|search``): equal anchors mean the same page of the same
  episode state, so GiGPO can group them.

Goals: ``split`` is ``train`` (default), ``dev``, ``test`` or ``all`` (WebShop's goal splits).
``reset(seed=s)`` picks a goal of the split from ``s``; ``options={"task": i}`` picks goal ``i``
of the split, ``options={"task": "<asin>:<k>"}`` a goal by id.
"""

from __future__ import annotations

import os
import random
from typing import Any

from agentgym.core import Env, Observation
from agentgym.environments.webshop.data import Catalog, Goal, load_catalog
from agentgym.environments.webshop.reward import RewardInfo, compute_reward
from agentgym.environments.webshop.search import get_index
from agentgym.environments.webshop.shop import Shop, ShopState

__all__ = ["WebShopTextEnv", "GoalPicker", "open_shop"]


def open_shop(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    num_products: int | None = None,
    human_goals: bool = True,
) -> Shop:
    """The catalog (official files in ``data_dir`` or generated) with its shared search index."""
    catalog = load_catalog(data_dir, seed=seed, num_products=num_products, human_goals=human_goals)
    return Shop(catalog, get_index(catalog))


class GoalPicker:
    """Goal selection shared by the text and GUI envs."""

    def __init__(self, catalog: Catalog, split: str) -> None:
        self.split = split
        self.goals = catalog.split(split)
        self._by_id = {g.goal_id: i for i, g in enumerate(self.goals)}

    def pick(self, seed: int | None, options: dict[str, Any] | None) -> tuple[int, Goal]:
        task = (options or {}).get("task")
        if task is None:
            rng = random.Random(seed) if seed is not None else random.Random()
            i = rng.randrange(len(self.goals))
        elif isinstance(task, int):
            if not 0 <= task < len(self.goals):
                raise ValueError(
                    f"task {task} is out of range: split {self.split!r} has "
                    f"{len(self.goals)} goals (0..{len(self.goals) - 1})"
                )
            i = task
        elif isinstance(task, str) and task in self._by_id:
            i = self._by_id[task]
        else:
            raise ValueError(
                f"unknown task {task!r}: pass a goal index of split {self.split!r} or a goal id "
                "such as 'B0ABC12345:0'"
            )
        return i, self.goals[i]

    def task_id(self, i: int, goal: Goal) -> str:
        return f"{self.split}/{i}:{goal.goal_id}"


class WebShopTextEnv(Env):
    """WebShop in text mode. See the module docstring for observations, anchors and goals.

    Args:
        split: goal split, ``train`` | ``dev`` | ``test`` | ``all``.
        data_dir: folder with the official WebShop files (``$WEBSHOP_DATA`` if unset); without
            it, the generated catalog is used.
        catalog_seed, num_products: the generated catalog (ignored with official data).
        human_goals: official data only: human instructions (default) or synthetic goals.
    """

    metadata = {"render_modes": ["text"]}

    def __init__(
        self,
        split: str = "train",
        data_dir: str | None = None,
        catalog_seed: int = 0,
        num_products: int | None = None,
        human_goals: bool = True,
    ) -> None:
        self.shop = open_shop(
            data_dir, seed=catalog_seed, num_products=num_products, human_goals=human_goals
        )
        self.picker = GoalPicker(self.shop.catalog, split)
        self.goal: Goal | None = None
        self.state = ShopState()
        self.result: RewardInfo | None = None
        self._task_id = ""

    @property
    def tasks(self) -> tuple[Goal, ...]:
        return self.picker.goals

    def _obs(self, prefix: str = "") -> Observation:
        assert self.goal is not None
        result = self.result.to_dict() if self.result is not None else None
        text = self.shop.text(self.state, result)
        return Observation(
            text=f"{prefix}\n\n{text}" if prefix else text,
            task=self.goal.instruction_text,
            admissible_actions=self.shop.admissible_actions(self.state),
            anchor=self.state.anchor(self.goal.goal_id),
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        i, self.goal = self.picker.pick(seed, options)
        self.state = ShopState()
        self.result = None
        self._task_id = self.picker.task_id(i, self.goal)
        return self._obs(), {"task_id": self._task_id, "goal_id": self.goal.goal_id}

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self.goal is None:
            raise RuntimeError("call reset() before step()")
        new, error = self.shop.apply(self.state, action)
        info: dict[str, Any] = {"won": False, "score": 0.0, "valid": error is None}
        if error is not None:
            return self._obs(error), 0.0, False, False, info
        self.state = new
        if new.page == "done":
            assert new.asin is not None
            self.result = compute_reward(self.shop.product(new.asin), self.goal, new.options_dict)
            r = self.result.reward
            info.update(won=r >= 1.0 - 1e-9, score=r, reward_info=self.result.to_dict())
            return self._obs(), r, True, False, info
        return self._obs(), 0.0, False, False, info

    def expert_action(self) -> str | None:
        if self.goal is None:
            return None
        return self.shop.expert_action(self.state, self.goal)

    def close(self) -> None:
        # The catalog and the read-only index are shared per process; nothing to release.
        self.goal = None
