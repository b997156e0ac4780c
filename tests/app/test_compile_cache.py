"""The persistent compile cache cljax turns on at import (``cljax.compile_cache``): where it is,
that ``CLJAX_JAX_CACHE=`` turns it off, and that a second process reads what the first wrote.
Each case is a fresh interpreter (the cache is set up on import)."""

import json
import os
import subprocess
import sys

import pytest

import cljax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Imports cljax (before jax), compiles one program (a small MLP's gradient: well under a second) and prints
# the cache folder in use and the persistent-cache hits JAX reported (its monitoring events).
_CHILD = r"""
import json, sys
import cljax  # first, as a config or a notebook would: it sets JAX's variables, imports no jax
assert "jax" not in sys.modules
from jax._src import monitoring
hits = []
monitoring.register_event_listener(
    lambda e, **kw: hits.append(1) if e == "/jax/compilation_cache/cache_hits" else None)
import jax, jax.numpy as jnp
def loss(w, x):
  for a in w:
    x = jnp.tanh(x @ a)
  return jnp.sum(x ** 2)
w = [jnp.ones((16, 16)) / 16] * 3
jax.block_until_ready(jax.jit(jax.grad(loss))(w, jnp.ones((4, 16))))
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits),
                  "ours": cljax.cache_dir()}))
"""


def _child(env_extra: dict, tmp_path) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ("CLJAX_JAX_CACHE", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR")}
  env.update(HOME=str(tmp_path / "home"), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env_extra)
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_in_a_process_that_imported_jax_first(monkeypatch, tmp_path):
  """This process (conftest imported jax before cljax): the setting went to jax.config."""
  import jax  # pylint: disable=import-outside-toplevel
  assert jax.config.jax_compilation_cache_dir == os.path.abspath(cljax.cache_dir())
  assert jax.config.jax_persistent_cache_min_compile_time_secs == cljax.MIN_COMPILE_SECS
  monkeypatch.setenv("CLJAX_JAX_CACHE", str(tmp_path / "ro"))
  os.makedirs(tmp_path / "ro")
  os.chmod(tmp_path / "ro", 0o500)
  try:
    if os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere: nothing to check here
      return
    with pytest.warns(UserWarning, match="cannot be written"):
      assert cljax.compile_cache(check=True) is None
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    monkeypatch.delenv("CLJAX_JAX_CACHE")
    cljax.compile_cache(check=True)  # back to the suite's folder
    os.chmod(tmp_path / "ro", 0o700)


def test_cache_dir_rules(monkeypatch, tmp_path):
  """XDG_CACHE_HOME, else ~/.cache; CLJAX_JAX_CACHE overrides both, empty means none."""
  monkeypatch.delenv("CLJAX_JAX_CACHE", raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert cljax.cache_dir() == str(tmp_path / ".cache" / "cljax" / "jax")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cljax.cache_dir() == str(tmp_path / "xdg" / "cljax" / "jax")
  monkeypatch.setenv("CLJAX_JAX_CACHE", str(tmp_path / "mine"))
  assert cljax.cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv("CLJAX_JAX_CACHE", "")
  assert cljax.cache_dir() is None


@pytest.mark.slow  # several seconds: the full suite runs it
def test_on_by_default_and_a_second_process_hits_it(tmp_path):
  first = _child({}, tmp_path)
  want = str(tmp_path / "home" / ".cache" / "cljax" / "jax")
  assert first["dir"] == first["ours"] == want
  assert first["hits"] == 0 and os.listdir(want)
  second = _child({}, tmp_path)
  assert second["hits"] >= 1, second


@pytest.mark.slow  # several seconds: the full suite runs it
def test_empty_variable_turns_it_off(tmp_path):
  got = _child({"CLJAX_JAX_CACHE": ""}, tmp_path)
  assert got["dir"] is None and got["ours"] is None
  assert not (tmp_path / "home" / ".cache" / "cljax").exists()


@pytest.mark.slow  # several seconds: the full suite runs it
def test_users_own_jax_folder_wins(tmp_path):
  got = _child({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")}, tmp_path)
  assert got["dir"] == str(tmp_path / "theirs")


def test_help_shows_where_the_cache_is(monkeypatch, capsys, tmp_path):
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("CLJAX_JAX_CACHE", str(tmp_path / "c"))
  assert cli.main(["run.py", "--help"], "unused.py", lambda *a: None, doc="A binary.") == 0
  assert f"kept in {tmp_path / 'c'}" in capsys.readouterr().out
  monkeypatch.setenv("CLJAX_JAX_CACHE", "")
  cli.main(["run.py", "--help"], "unused.py", lambda *a: None, doc="A binary.")
  assert "off (CLJAX_JAX_CACHE is set empty)" in capsys.readouterr().out
