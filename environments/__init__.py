"""Built-in environment families.

Importing this package registers every built-in family (each family's ``__init__`` calls
:func:`agentgym.register` with lazy entry points and imports nothing heavy). A family whose
folder is absent is skipped.
"""

import importlib
import importlib.util

FAMILIES = ("textworld", "alfworld", "webshop", "swe", "sokoban", "frozenlake")

for _family in FAMILIES:
    if importlib.util.find_spec(f"{__name__}.{_family}") is not None:
        importlib.import_module(f"{__name__}.{_family}")
