"""The import rules of the house (README "Layout"), as import-linter contracts in pyproject.toml.

Layers run one way (app > learners > train > optim > data, eval > models, ops > learner, progress),
no method imports another, and no two modules of a package import each other in a circle.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint(*args, cwd=ROOT):
  exe = pathlib.Path(sys.executable).with_name("lint-imports")
  return subprocess.run([str(exe), "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_the_import_contracts_hold():
  r = _lint()
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  assert "Contracts: 3 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def test_a_learner_importing_another_breaks_a_contract(tmp_path):
  # The contracts can fail: a copy of the package where one method imports another is caught.
  import shutil
  shutil.copytree(ROOT / "cljax", tmp_path / "cljax")
  shutil.copy(ROOT / "pyproject.toml", tmp_path)
  f = tmp_path / "cljax" / "learners" / "lwf.py"
  f.write_text(f.read_text() + "\nfrom cljax.learners import slda  # noqa\n")
  g = tmp_path / "cljax" / "models" / "small.py"
  g.write_text(g.read_text() + "\nfrom cljax.app import runner  # noqa\n")
  exe = pathlib.Path(sys.executable).with_name("lint-imports")
  r = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                     env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
  assert r.returncode != 0
  assert "cljax.learners.lwf is not allowed to import cljax.learners.slda" in r.stdout, r.stdout
  assert "cljax.models.small -> cljax.app.runner" in r.stdout, r.stdout
