"""Built-in learners. Every module in this package registers its learners on import.

``cljax.learners.get(name, **hparams)`` builds one; ``cljax.learners.names()`` lists them.
"""

import importlib
import pkgutil

from cljax.learner import Learner, get, hparam_names, names, register  # noqa: F401

# Import every learner module so that each registers itself; adding a method is adding a file.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  if not _info.name.startswith("_"):
    importlib.import_module(f"{__name__}.{_info.name}")
