"""FrozenLake: generated frozen lakes (ice, holes, a goal), a second cheap testbed for RL.

Pure Python, every seed a new lake, disjoint train/test lake sets, recurring states (GiGPO's step
groups fill), a BFS expert, optional slippery ice. See ``docs/frozenlake.md``.
"""

from agentgym.registration import register

_EP = "agentgym.environments.frozenlake.env:FrozenLakeEnv"

register(
    id="frozenlake/FrozenLake4x4-v0",
    entry_point=_EP,
    max_turns=10,
    kwargs={"height": 4, "width": 4, "hole_frac": 0.2, "min_path": 1, "max_path": 6},
    description="4x4 lake, ~20% holes, safe paths of 1-6 moves",
    fast=True,
    eval_split="test",
)
register(
    id="frozenlake/FrozenLake6x6-v0",
    entry_point=_EP,
    max_turns=15,
    kwargs={"height": 6, "width": 6, "hole_frac": 0.2, "min_path": 2, "max_path": 10},
    description="6x6 lake, ~20% holes, safe paths of 2-10 moves",
    fast=True,
    eval_split="test",
)
register(
    id="frozenlake/FrozenLake8x8-v0",
    entry_point=_EP,
    max_turns=30,
    kwargs={"height": 8, "width": 8, "hole_frac": 0.2, "min_path": 4, "max_path": 14},
    description="8x8 lake, ~20% holes, safe paths of 4-14 moves",
    fast=True,
    eval_split="test",
)
register(
    id="frozenlake/FrozenLake4x4Local-v0",
    entry_point=_EP,
    max_turns=10,
    kwargs={
        "height": 4,
        "width": 4,
        "hole_frac": 0.2,
        "min_path": 1,
        "max_path": 6,
        "render": "local",
    },
    description="4x4 lake seen from the agent's cell: the goal's offset and the four neighbours",
    fast=True,
    eval_split="test",
)
register(
    id="frozenlake/FrozenLake4x4Slippery-v0",
    entry_point=_EP,
    max_turns=40,
    kwargs={"height": 4, "width": 4, "hole_frac": 0.2, "min_path": 1, "max_path": 6, "slip": 2 / 3},
    description="4x4 slippery lake (a move slides sideways 2/3 of the time, as in Gymnasium)",
    fast=True,
    eval_split="test",
)
