"""What the experiment binaries (``experiments/run.py``, ``experiments/pretrain.py``) share:
flag parsing, signals and one-line errors.

``main(argv, ...)`` parses ``--config`` (an ml_collections config file, overrides
``--config.KEY=VALUE``), ``--workdir`` and ``--resume``, then runs the binary's entry with:

* every error a user can cause (flags, config, data, workdir, a full disk, a resume under another
  config) printed as one line ``error: ...`` on stderr, exit status 2, no traceback;
* SIGTERM and SIGINT stopping the run at once except for the checkpoint being written, which
  finishes; one line says which step is saved and how to continue; exit status 143 / 130.

Overrides: existing keys keep their type (``--config.seed=1.5`` is refused); keys the config does
not have are accepted here and refused by the experiment's validation, which lists the valid
ones; ``dataset_kwargs.KEY``, ``model_kwargs.KEY`` and ``hparams.RUN.KEY`` may be new (their
values are read as Python literals, else as strings: ``--config.dataset_kwargs.path=a.npz``);
``--config.KEY=None`` unsets a key (e.g. ``budget.passes_per_step``: each learner's default).
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Optional

from absl import flags
from absl import logging

import cljax

_HPARAMS = "--config.hparams."
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class UsageError(ValueError):
  """Bad command-line flags."""


def setup() -> None:
  """Quiet absl logging (orbax logs every save at INFO) and the persistent compile cache.

  Compiled programs are kept in ``cljax.cache_dir()`` (``~/.cache/cljax/jax``; ``CLJAX_JAX_CACHE``
  moves it, empty turns it off), so repeat runs skip their compiles (``cljax.compile_cache``).
  """
  logging.set_verbosity(logging.WARNING)
  cljax.compile_cache(check=True)


def _cache_help() -> str:
  """The --help line on the compile cache: where it is, how to move or turn it off."""
  path = cljax.cache_dir()
  where = f"in {path}" if path else f"off ({cljax.CACHE_ENV} is set empty)"
  return (f"compile cache: compiled programs are kept {where}, so a repeat run starts in "
          f"seconds; {cljax.CACHE_ENV}=DIR moves it, {cljax.CACHE_ENV}= turns it off, deleting "
          "the folder is safe")


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _split_overrides(argv: list) -> tuple:
  """argv without the overrides absl cannot apply (``hparams.RUN.KEY`` of a run the config may
  not have, ``KEY=None``), and those as (dotted key, text value) pairs."""
  rest, extra, i = [argv[0]], [], 1
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config.") and (a.startswith(_HPARAMS) or a.endswith("=None")):
      if "=" in a:
        k, v = a.split("=", 1)
      elif i + 1 < len(argv):
        k, v, i = a, argv[i + 1], i + 1
      else:
        raise UsageError(f"{a} needs a value ({a}=VALUE)")
      extra.append((k[len("--config."):], v))
    else:
      rest.append(a)
    i += 1
  return rest, extra


def _apply(config, key: str, text: str) -> None:
  """Sets ``config.<key>`` from a command-line value (see the module docstring)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  *path, leaf = key.split(".")
  node = config
  for i, p in enumerate(path):
    if p not in node:
      if path[:1] != ["hparams"] or i == 0:
        raise UsageError(f"--config.{key}: {'.'.join(path[:i + 1])} is not a config key")
      node[p] = ml_collections.ConfigDict()
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict):
    raise UsageError(f"--config.{key}: {'.'.join(path)} is not a group of keys")
  if text == "None":
    if leaf not in node:
      raise UsageError(f"--config.{key}=None: {key} is not a config key")
    node[leaf] = None
    return
  value, old = _literal(text), node.get(leaf, None)
  if old is not None and not isinstance(value, type(old)):
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    else:
      raise UsageError(f"--config.{key}={text}: expected a {type(old).__name__} like "
                       f"{old!r}")
  node[leaf] = value


def parse(argv: list, default_config: str, resume_flag: bool = True,
          processes: bool = False) -> tuple:
  """(config, workdir, resume, (coordinator_address, process_id)) from the command line;
  UsageError with one line otherwise. ``processes``: the binary takes ``--coordinator_address``
  and ``--process_id`` (a multi-process run, ``cljax.app.distributed``)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv, extra = _split_overrides(list(argv))
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Where results, plots and checkpoints go.", flag_values=fv)
  if resume_flag:
    flags.DEFINE_bool("resume", False, "Continue the runs of --workdir from their latest "
                      "complete checkpoints.", flag_values=fv)
  if processes:
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a run over "
                        "--config.num_processes processes (one per host).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                         flag_values=fv)
  try:
    cfg = config_flags.DEFINE_config_file(
        "config", default_config, "Experiment config file.", flag_values=fv, lock_config=False,
        accept_new_attributes=True, sys_argv=argv)
    positional = fv(argv)[1:]
  except Exception as e:  # pylint: disable=broad-except  # absl and ml_collections raise many
    raise UsageError(_flag_message(e)) from None
  if positional:
    raise UsageError(f"unexpected arguments {positional}; flags are --config, --workdir"
                     + (", --resume" if resume_flag else ""))
  config = cfg.value
  if not isinstance(config, ml_collections.ConfigDict):  # the config file did not load
    try:
      config.lock()
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError(f"cannot load --config={fv['config'].config_filename}: "
                       f"{type(e).__name__}: {e}") from None
  for key, text in extra:
    _apply(config, key, text)
  if not fv.workdir:
    raise UsageError("--workdir is required: the folder where results, plots and checkpoints go")
  procs = (fv.coordinator_address, fv.process_id) if processes else (None, None)
  if (procs[0] is None) != (procs[1] is None):
    raise UsageError("--coordinator_address and --process_id go together (each host of a "
                     "multi-process run passes both)")
  return config, fv.workdir, bool(resume_flag and fv.resume), procs


def _flag_message(e: Exception) -> str:
  if isinstance(e, (KeyError, AttributeError)):  # ml_collections: a new key under a new group
    key = str(e).strip().strip("\"'")
    return (f"config key {key!r} does not exist (only dataset_kwargs, model_kwargs and "
            "hparams.RUN may take new keys)")
  return str(e)


@contextlib.contextmanager
def interrupts():
  """SIGTERM and SIGINT ask the runner to stop (``runner.request_stop``) and raise
  ``runner.Interrupted`` in the main thread, once: a second signal is ignored while the
  checkpoint in flight finishes."""
  from cljax.app import runner  # pylint: disable=import-outside-toplevel
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  from cljax.app import distributed  # pylint: disable=import-outside-toplevel
  # Several processes must stop at the same point (a process that stops alone leaves the others
  # waiting in a collective): the runner agrees on the request at its next chunk of batches.
  raise_at_once = distributed.count() == 1

  def handler(signum, frame):  # pylint: disable=unused-argument
    if runner.stop_requested() is not None:
      return
    runner.request_stop(signum)
    if raise_at_once:
      raise runner.Interrupted(signum)

  runner.request_stop(None)
  old = {s: signal.signal(s, handler) for s in _SIGNALS}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def _user_errors() -> tuple:
  # pylint: disable=import-outside-toplevel
  from cljax.data.sources import DataError
  from cljax.learner import BatchError
  from cljax.app import runner
  from cljax.app.checkpoint import CheckpointError
  from cljax.app.config_schema import ConfigError
  return (UsageError, ConfigError, DataError, BatchError, runner.RunError, CheckpointError)


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _interrupted_message(e) -> str:
  name = signal.Signals(e.signum).name
  if e.run_name is None:
    return f"stopped by {name} before a run was training; rerun the same command with --resume"
  saved = (f"has {e.saved_step + 1} of its {e.num_steps} steps saved"
           if e.saved_step is not None else "had not saved a step yet")
  return (f"stopped by {name}: run {e.run_name!r} {saved} ({e.directory}); continue with the "
          "same command plus --resume")


def guarded(fn: Callable[[], object]) -> int:
  """Runs ``fn`` with the signal handlers on; returns the exit status (0, 2 for a user error,
  128 + the signal number when stopped by SIGTERM / SIGINT) after printing one line for an error
  or a stop. Other exceptions (bugs) propagate with their traceback."""
  from cljax.app import runner  # pylint: disable=import-outside-toplevel
  try:
    with interrupts():
      fn()
  except runner.Interrupted as e:
    print(_interrupted_message(e), file=sys.stderr, flush=True)
    return 128 + e.signum
  except _user_errors() as e:
    print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
    return 2
  except OSError as e:  # the file system refused: a full disk, permissions, a vanished folder
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: {_one_line(e.strerror or e)}{where}; free space or fix the folder, then rerun"
          " (with --resume to keep finished steps)", file=sys.stderr, flush=True)
    return 2
  except BaseException:  # pylint: disable=broad-except
    signum = runner.stop_requested()
    if signum is None:
      raise
    # the signal's exception came out of library code as another exception: still the stop
    print(_interrupted_message(runner.Interrupted(signum)), file=sys.stderr, flush=True)
    return 128 + signum
  finally:
    runner.request_stop(None)
  return 0


def main(argv: list, default_config: str, entry: Callable, doc: str = "",
         resume_flag: bool = True, check: Optional[Callable] = None) -> int:
  """A binary: parses ``argv`` (``--help`` prints ``doc``), then runs
  ``entry(config, workdir, resume)`` (``entry(config, workdir)`` without ``resume_flag``) under
  ``guarded``. Returns the exit status.

  ``check(config, workdir, resume)``: given for binaries that run over several processes
  (``config.num_processes``). With ``num_processes`` > 1 and no ``--coordinator_address``, this
  process checks everything (``check``: one line for a bad input, before any process starts),
  then starts the run's processes on this machine and waits for them
  (``distributed.launch_local``); with ``--coordinator_address`` and ``--process_id`` it joins
  the run as that process."""
  flags.FLAGS.mark_as_parsed()  # absl's own flags (logging; grain needs them parsed)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(doc.strip() + "\n\nflags: --config=FILE[:ARG] --config.KEY=VALUE --workdir=DIR"
          + (" [--resume]" if resume_flag else "") + "\n\n" + _cache_help())
    return 0
  try:
    config, workdir, resume, (coordinator, process_id) = parse(
        argv, default_config, resume_flag, processes=check is not None)
    num_processes = _num_processes(config, check)
  except UsageError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
    return 2
  if num_processes > 1 and coordinator is None:  # the launcher
    setup()
    status = guarded(lambda: check(config, workdir, resume))
    if status:
      return status
    from cljax.app import distributed  # pylint: disable=import-outside-toplevel
    return distributed.launch_local(argv, num_processes, os.path.abspath(workdir))
  if coordinator is not None:
    try:
      _join(coordinator, num_processes, process_id)
    except UsageError as e:
      print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
      return 2
  setup()
  args = (config, workdir, resume) if resume_flag else (config, workdir)
  return guarded(lambda: entry(*args))


def _num_processes(config, check) -> int:
  n = config.get("num_processes", 1) if check is not None else 1
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise UsageError(f"num_processes must be an int >= 1, got {n!r}")
  return n


def _join(coordinator: str, num_processes: int, process_id: int) -> None:
  """Joins a multi-process run (``jax.distributed``) before any JAX work; UsageError if not."""
  if not 0 <= process_id < num_processes:
    raise UsageError(f"--process_id={process_id} is outside [0, {num_processes}) "
                     f"(--config.num_processes={num_processes})")
  from cljax.app import distributed  # pylint: disable=import-outside-toplevel
  distributed.die_with_launcher()
  try:
    distributed.initialize(coordinator, num_processes, process_id)
  except Exception as e:  # pylint: disable=broad-except  # jax raises several kinds
    raise UsageError(f"could not join the run at --coordinator_address={coordinator} as "
                     f"process {process_id} of {num_processes}: {type(e).__name__}: "
                     f"{str(e)[:300]}") from None


def run_or_exit(fn: Callable[[], object]) -> None:
  """Runs ``fn`` (inside an absl ``app.run`` main); a user error prints ``error: ...`` and exits
  with status 2, SIGTERM / SIGINT with 143 / 130 (``guarded``)."""
  status = guarded(fn)
  if status:
    sys.exit(status)

