"""Progress lines for long host loops: rate and ETA, passed explicitly as a ``progress`` callback.

Both classes are ``progress(done, total, sums)`` callbacks, called on the host after every chunk of
a ``cljax.train.loop.Loop`` (or of any chunked host loop, e.g. feature extraction):

* ``Progress(log, prefix, rows_per_step)``: about ``lines`` evenly spaced lines with the mean of
  the first metric, examples/s and ETA (base initialisation, feature extraction).
* ``Reporter(log, prefix)``: time-based; silent for loops shorter than ``after_s``, then a line
  every ``every_s`` (the runner hands one to every ``end_of_step``).
"""

from __future__ import annotations

import time
from typing import Callable

import jax


class Progress:
  """``progress`` callback for ``Loop``: about ``lines`` log lines with rate and ETA."""

  def __init__(self, log: Callable[[str], None], prefix: str, rows_per_step: int,
               lines: int = 20, metric: str = "loss"):
    self.log, self.prefix, self.rows, self.lines, self.metric = log, prefix, rows_per_step, \
        lines, metric
    self.t0 = time.perf_counter()
    self.last = 0

  def __call__(self, done: int, total: int, sums) -> None:
    every = max(1, total // self.lines)
    if done < total and done - self.last < every:
      return
    self.last = done
    el = time.perf_counter() - self.t0
    rate = done * self.rows / el if el > 0 else float("nan")
    eta = el / done * (total - done) if done else float("nan")
    # sums None: a loop without a metric (e.g. feature extraction) logs rate and ETA only
    metric = "" if sums is None else f"{self.metric} {float(sums[0]) / done:.4f} | "
    self.log(f"{self.prefix} step {done}/{total} | {metric}{rate:,.0f} ex/s | ETA {eta:.0f}s")


class Reporter:
  """Time-based ``progress`` for ``Loop``: ``prefix pass i/n | R passes/s | ETA s`` once a loop
  has run ``after_s`` seconds, then every ``every_s``; loops shorter than ``after_s`` stay
  silent. One reporter may serve several loops in turn (a call whose ``done`` does not exceed the
  previous one starts a new loop). Chunks are dispatched asynchronously, so the clock only means
  something after a sync: it waits on the latest chunk about every second (the first two chunks
  time one chunk), a stall of one chunk per second at most."""

  def __init__(self, log: Callable[[str], None], prefix: str, after_s: float = 10.0,
               every_s: float = 10.0):
    self.log, self.prefix, self.after, self.every = log, prefix, float(after_s), float(every_s)
    self._start()
    self.done = 0

  def _start(self) -> None:
    self.t0 = time.perf_counter()
    self.last_print = self.t0
    self.chunks = 0
    self.sync_every = 1
    self.printed = False

  def __call__(self, done: int, total: int, sums) -> None:
    if done <= self.done:  # a new loop
      self._start()
    self.done = done
    self.chunks += 1
    if done < total and self.chunks % self.sync_every:
      return
    jax.block_until_ready(sums)
    now = time.perf_counter()
    el = now - self.t0
    self.sync_every = max(1, int(self.chunks / max(el, 1e-6)))  # about one sync per second
    if done < total and (el < self.after or now - self.last_print < self.every):
      return
    if done == total and not self.printed:  # short loops stay silent
      return
    self.last_print, self.printed = now, True
    self.log(f"{self.prefix} pass {done}/{total} | {done / el:,.1f} passes/s | "
             f"ETA {el / done * (total - done):.0f}s")
