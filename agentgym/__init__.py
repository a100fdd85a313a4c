"""agentgym: train and evaluate LLM agents with RL in multi-turn environments.

The core is light on purpose: importing ``agentgym`` imports no torch, no game engine, no
Docker client. Heavy pieces load when an env is made or a trainer starts.
"""

from agentgym.checker import EnvCheckError, check_env
from agentgym.core import INFO_KEYS, Env, EnvWrapper, Observation, ResetNeeded, StepResult
from agentgym.registration import (
    EnvSpec,
    UnknownEnvError,
    all_specs,
    load_plugins,
    make,
    register,
    registry,
    spec,
)
from agentgym.trajectory import Trajectory, TrajectoryWriter, Turn, read_trajectories

__version__ = "0.1.0"

__all__ = [
    "Env",
    "EnvWrapper",
    "Observation",
    "StepResult",
    "ResetNeeded",
    "INFO_KEYS",
    "EnvSpec",
    "UnknownEnvError",
    "register",
    "make",
    "spec",
    "registry",
    "all_specs",
    "load_plugins",
    "check_env",
    "EnvCheckError",
    "Trajectory",
    "Turn",
    "TrajectoryWriter",
    "read_trajectories",
    "EnvPool",
]


def __getattr__(name: str):  # lazy: the pool pulls in multiprocessing machinery
    if name == "EnvPool":
        from agentgym.pool import EnvPool

        return EnvPool
    raise AttributeError(f"module 'agentgym' has no attribute {name!r}")
