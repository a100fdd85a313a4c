"""SWE: repository-level bug fixing with tools in hardened Docker sandboxes (SWE-bench format)."""

from agentgym.environments.swe.tools import SWE_TOOLS
from agentgym.registration import register

register(
    id="swe/Builtin-v0",
    entry_point="agentgym.environments.swe.env:SWEEnv",
    max_turns=30,
    kwargs={"dataset": "builtin"},
    description="fix one of 26 bugs in 5 small Python repos with bash/view/replace tools",
    extras="swe",
    tools=SWE_TOOLS,
)
register(
    id="swe/Dataset-v0",
    entry_point="agentgym.environments.swe.env:SWEEnv",
    max_turns=50,
    kwargs={"dataset": "builtin"},
    description="SWE-bench style tasks from a JSONL file (dataset=..., repos_dir=...)",
    extras="swe",
    tools=SWE_TOOLS,
)
