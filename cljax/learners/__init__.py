"""Built-in learners, one file per method; every module registers its learners on import.

    learner = cljax.learners.get("er", num_classes=10)   # see cljax/learner.py for the contract
    cljax.learners.names()                              # every registered learner
"""

import importlib
import pkgutil

from cljax.learners.registry import INPUTS, get, hparam_names, inputs, names, register  # noqa: F401

# Import every method module so that each registers itself; adding a method is adding a file.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  if not _info.name.startswith("_") and _info.name != "registry":
    importlib.import_module(f"{__name__}.{_info.name}")
