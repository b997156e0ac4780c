"""Multi-process runs: JAX's multi-controller model (``jax.distributed``), one process per host.

Every process runs the same program on its own devices; the ``data`` mesh spans the devices of
all processes (``cljax.train.mesh.data_mesh``), and jitted calls over global arrays are collective:
every process makes the same calls in the same order. What differs between processes:

* input: each process loads only its rows of each global batch (:func:`local_rows`) and the
  global batch is assembled from the processes' parts, so N processes train on exactly the
  batches one process would (the stream is sharded *within* each batch, not by records);
* output: only the primary process (index 0) prints progress, writes checkpoints, results.json,
  plots and logs (:func:`primary`); every process restores from the same checkpoint folder
  (a file system all hosts share);
* host values: :func:`to_host` gathers arrays held partly by other processes (a collective);
  :func:`agree` makes the processes take the same decision (e.g. to stop at a signal).

On CPU the processes talk through gloo (``jax_cpu_collectives_implementation``), so a 2-process
run works on one machine (``experiments/run.py --config.num_processes=2``, which starts the
processes itself); on a cluster each host starts one process with ``--coordinator_address`` and
``--process_id``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from cljax.ops import sharding


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Joins the run as process ``process_id`` of ``num_processes``; call before any JAX work."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def primary() -> bool:
  """True in the process that writes (index 0; also in every single-process run)."""
  return jax.process_index() == 0


def log(msg: str) -> None:
  """Prints ``msg`` (flushed); in a multi-process run only the primary process prints. The
  default ``log`` of the experiment and the binaries."""
  if primary():
    print(msg, flush=True)


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
  """The largest of the processes' ``value``s, in every process (collective when N > 1)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def same_everywhere(value: int, what: str) -> None:
  """RuntimeError unless every process holds the same ``value`` (e.g. the restored step)."""
  if jax.process_count() == 1:
    return
  got = np.asarray(multihost_utils.process_allgather(np.int64(value)))
  if np.any(got != got[0]):
    raise RuntimeError(f"the processes disagree on {what}: {got.tolist()}")


def to_host(tree: Any) -> Any:
  """A numpy copy of every array of ``tree`` (typed keys stay keys, rebuilt from a copy of their
  key data). Arrays that other processes hold parts of are all-gathered: every process must
  call this with the same tree at the same point. A copy, so a later donation of an array's
  buffer cannot change it (on CPU ``np.asarray`` may be a view)."""

  def host(a):
    if sharding.is_key(a):
      return jax.random.wrap_key_data(host(jax.random.key_data(a)), impl=jax.random.key_impl(a))
    if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
      return np.array(multihost_utils.process_allgather(a, tiled=True), copy=True)
    return np.array(a, copy=True)

  return jax.tree.map(host, tree)


def local_rows(mesh, batch_size: int) -> Optional[slice]:
  """The rows of a [batch_size, ...] batch split over ``data`` that this process's devices hold
  (a contiguous slice), or None when every process needs the whole batch (one process, or a
  batch size the device count does not divide, which the runner replicates)."""
  n = mesh.devices.size
  if jax.process_count() == 1 or batch_size % n:
    return None
  index = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,))
  starts = sorted(s[0].start or 0 for s in index.values())
  stops = sorted(s[0].stop if s[0].stop is not None else batch_size for s in index.values())
  lo, hi = starts[0], stops[-1]
  if hi - lo != len(set(starts)) * (batch_size // n):
    raise RuntimeError(f"process {jax.process_index()}'s devices hold rows that are not "
                       f"contiguous: {sorted(zip(starts, stops))}")
  return slice(lo, hi)


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_LAUNCHED = "CLJAX_LAUNCHED_BY"  # set by launch_local in its children: the launcher's pid


def die_with_launcher() -> None:
  """In a process started by :func:`launch_local`: SIGKILL when the launcher dies (Linux), so no
  process of a killed run is left waiting for the others. A no-op elsewhere."""
  import os  # pylint: disable=import-outside-toplevel
  if os.environ.get(_LAUNCHED) != str(os.getppid()):
    return
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


# How long the other processes may take to stop once one has exited with an error or a signal
# (the primary's checkpoint in flight finishes in that time) before they are killed.
GRACE_S = 60.0


def launch_local(argv: list, num_processes: int, workdir: str) -> int:
  """Runs the binary ``argv`` as ``num_processes`` processes on this machine and returns the exit
  status: the primary's when it failed, else the first failure of another one, else 0.

  Each child gets ``--coordinator_address=127.0.0.1:PORT --process_id=i``. The primary's output
  goes to this terminal; process i's to ``WORKDIR/process_<i>.log``. SIGTERM and SIGINT are
  passed on to every child (they stop together at the next chunk of batches). A child that
  exits with an error gets the others killed after ``GRACE_S`` seconds.
  """
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  address = f"127.0.0.1:{_free_port()}"
  procs, logs = [], []
  for i in range(num_processes):
    log_path = None if i == 0 else os.path.join(workdir, f"process_{i}.log")
    out = None if log_path is None else open(log_path, "w")  # pylint: disable=consider-using-with
    logs.append(log_path)
    # No preexec_fn: forking a multithreaded JAX process may deadlock before exec; the child
    # arms its own parent-death signal (die_with_launcher).
    procs.append(subprocess.Popen(
        [sys.executable] + list(argv) + [f"--coordinator_address={address}", f"--process_id={i}"],
        stdout=out, stderr=None if out is None else subprocess.STDOUT,
        env=dict(os.environ, **{_LAUNCHED: str(os.getpid())})))
    if out is not None:
      out.close()

  def forward(signum, frame):  # pylint: disable=unused-argument
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    first_failure = None
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed and first_failure is None:
        first_failure = time.monotonic()
      if first_failure is not None and time.monotonic() - first_failure > GRACE_S:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.1)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  codes = [p.wait() for p in procs]
  if codes[0] != 0:
    return codes[0] if codes[0] > 0 else 128 - codes[0]
  for i, c in enumerate(codes[1:], 1):
    if c != 0:
      tail = ""
      with open(logs[i], errors="replace") as f:
        lines = [l.strip() for l in f if l.strip()]
      if lines:
        tail = f": {lines[-1][:300]}"
      print(f"error: process {i} of {num_processes} exited with status {c}{tail} (its output: "
            f"{logs[i]})", file=sys.stderr, flush=True)
      return 2 if c > 0 else 128 - c
  return 0
