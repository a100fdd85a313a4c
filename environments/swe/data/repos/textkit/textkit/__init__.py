"""textkit: a small library used by the agentgym SWE task suite."""
