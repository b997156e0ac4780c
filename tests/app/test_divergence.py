"""Divergence is never silent (issue 21 item 6), on real digits.

* ``divergence``'s rule on its own: a non-finite parameter, an infinite loss, a loss over 1000x
  max(the step's first loss, ln K); an ordinary rise from a small loss is not one;
* a plain SGD softmax classifier written here (a learner on the contract, not from the registry)
  whose learning rate, above 1, blows up from its 4th batch on: with ``on_divergence="stop"`` the
  run raises ``Diverged`` naming the run, step and loss and keeps the steps saved before; with
  ``"rollback"`` the last good step is restored, the rate halved, the run finishes with
  ``rollbacks`` recorded; the stopped run resumed with rollback ends exactly as the rollback run;
* the binary: ER at lr 1e6 stops with one line ``error: ...`` and exit status 2 (slow).
"""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import data
from cljax import learner as contract
from cljax.app import runner
from experiments.bench import faults


def test_rule():
  W = runner.LossWatch
  ok = W(top=2.5, first=2.3, infinite=0)
  nan = float("nan")
  assert runner.divergence(ok, nan, True, 10) is None
  assert runner.divergence(W(30.0, 0.01, 0), nan, True, 10) is None  # 0.01 -> 30: < 1000 ln 10
  reason, loss = runner.divergence(W(4.7e21, 2.3, 0), nan, True, 10)
  assert loss == 4.7e21 and "exploded" in reason and "2.3 at the step's start" in reason
  assert runner.divergence(ok, 1e6, True, 10)[1] == 1e6  # the end of step's loss counts too
  assert runner.divergence(W(-np.inf, None, 0), 1e6, True, 10)[1] == 1e6  # offline learners
  assert "infinite" in runner.divergence(W(-np.inf, None, 1), nan, True, 10)[0]
  assert "parameters" in runner.divergence(ok, nan, False, 10)[0]
  boundary = W(2.5e4, 2.3e4, 0)  # a step that starts already blown up...
  assert runner.divergence(boundary, nan, True, 10) is None
  assert runner.divergence(boundary, nan, True, 10, previous=2.3)[1] == 2.5e4  # ...is caught


class _State(NamedTuple):
  w: jax.Array  # [D, K]
  b: jax.Array  # [K]
  n: jax.Array  # [] int32: batches seen


def softmax_sgd(lr: float, num_classes: int = 10, boom_after: int = 5) -> contract.Learner:
  """Plain SGD on a linear softmax classifier of flattened inputs; with ``lr`` above 1 every
  update from batch ``boom_after`` on is multiplied by 1e6 (a learner that diverges at a known
  point, so the runner's handling can be pinned)."""

  def init(key, batch):
    del key
    d = int(np.prod(batch["x"].shape[1:]))
    return _State(jnp.zeros((d, num_classes)), jnp.zeros(num_classes), jnp.int32(0))

  def loss_fn(w, b, batch):
    valid, labeled = contract.masks(batch)
    x = batch["x"].reshape(batch["x"].shape[0], -1)
    logp = jax.nn.log_softmax(x @ w + b)
    ce = -jnp.take_along_axis(logp, batch["y"][:, None], 1)[:, 0]
    return jnp.sum(jnp.where(labeled, ce, 0.0)) / jnp.maximum(labeled.sum(), 1)

  @jax.jit
  def update(state, batch, key):
    del key
    loss, (gw, gb) = jax.value_and_grad(loss_fn, (0, 1))(state.w, state.b, batch)
    scale = jnp.where((lr > 1.0) & (state.n >= boom_after), 1e6, 1.0) * lr
    return (_State(state.w - scale * gw, state.b - scale * gb, state.n + 1),
            contract.info(1.0, loss))

  def predict(state, x):
    return x.reshape(x.shape[0], -1) @ state.w + state.b

  return contract.Learner("softmax_sgd", init, update, contract.identity_end_of_step,
                          jax.jit(predict), {"lr": lr})


@pytest.fixture(scope="module")
def stream():
  ds = data.load("digits")
  return data.make_stream(ds, "class_incremental", classes_per_step=2, seed=0,
                          max_examples_per_step=64)


def _opts(**kw):
  return runner.RunOptions(batch_size=16, eval_batch_size=200, latency_calls=0, **kw)


def _rescaled(lr):
  return lambda scale: softmax_sgd(lr * scale)


def test_stop_keeps_saved_steps_and_rollback_recovers(stream, tmp_path):
  lr = 1.5  # blows up from its 6th batch on, in step 1 (0-based; 4 batches of 16 per step)
  with pytest.raises(runner.Diverged) as e:
    runner.run_learner("sgd", softmax_sgd(lr), stream, _opts(), str(tmp_path / "stop"),
                       log=lambda m: None, rescaled=_rescaled(lr))
  msg = str(e.value)
  assert msg.startswith("run 'sgd' diverged at step 2 of 5: its loss exploded to ")  # 1-based
  assert "steps up to 1 are saved" in msg and "--config.on_divergence=rollback --resume" in msg
  assert "--config.hparams.sgd.lr, now 1.5" in msg and "\n" not in msg
  assert sorted(os.listdir(tmp_path / "stop" / "checkpoints" / "sgd")) == ["0"]

  logs = []
  rec = runner.run_learner("sgd", softmax_sgd(lr), stream, _opts(on_divergence="rollback"),
                           str(tmp_path / "rb"), log=logs.append, rescaled=_rescaled(lr))
  assert [(r["step"], r["lr_scale"]) for r in rec["rollbacks"]] == [(1, 0.5)]  # 0-based
  assert rec["rollbacks"][0]["loss"] > 1e3 and len(rec["steps"]) == 5
  assert any("rolled back to step 1 with its learning rates x0.5" in m for m in logs), logs
  # lr 0.75 learns each new task (plain SGD forgets the old ones: class-incremental)
  assert all(s["loss"] < 10 for s in rec["steps"]), [s["loss"] for s in rec["steps"]]
  diagonal = [rec["accuracy_matrix"][t][t] for t in range(5)]  # each task right after its step
  assert np.mean(diagonal) > 0.5, diagonal  # chance: 0.1
  # The run stopped above, resumed with rollback, ends exactly where the rollback run ended.
  resumed = runner.run_learner("sgd", softmax_sgd(lr), stream, _opts(on_divergence="rollback"),
                               str(tmp_path / "stop"), resume=True, log=lambda m: None,
                               rescaled=_rescaled(lr))
  assert faults.differences(faults.without_timings({"sgd": resumed}),
                            faults.without_timings({"sgd": rec})) == []


def test_rollbacks_are_bounded(stream, tmp_path):
  lr = 100.0  # halved 3 times: 12.5, still above 1: diverges again
  with pytest.raises(runner.Diverged, match="after 3 rollbacks .learning rates x0.125.") as e:
    runner.run_learner("sgd", softmax_sgd(lr), stream, _opts(on_divergence="rollback"),
                       str(tmp_path), log=lambda m: None, rescaled=_rescaled(lr))
  assert "--config.max_rollbacks, now 3" in str(e.value)
  with pytest.raises(runner.Diverged, match="no learning rate to lower"):
    runner.run_learner("sgd", softmax_sgd(lr), stream, _opts(on_divergence="rollback"),
                       str(tmp_path / "none"), log=lambda m: None, rescaled=lambda s: None)


def test_a_deeper_rollback_factor_recovers_sooner(stream, tmp_path):
  lr = 6.0  # halving needs 3 rollbacks to reach 0.75; x0.125 needs one
  rec = runner.run_learner("sgd", softmax_sgd(lr), stream,
                           _opts(on_divergence="rollback", rollback_factor=0.125),
                           str(tmp_path), log=lambda m: None, rescaled=_rescaled(lr))
  assert [r["lr_scale"] for r in rec["rollbacks"]] == [0.125]
  diagonal = [rec["accuracy_matrix"][t][t] for t in range(5)]
  assert np.mean(diagonal) > 0.5, diagonal


@pytest.mark.slow
def test_binary_lr_1e6_stops_with_one_line(tmp_path):
  out = faults.run(faults.TINY, str(tmp_path), "--config.learners=er",
                   "--config.hparams.er.lr=1e6")
  assert out.returncode == 2, out.stderr[-2000:]
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: run 'er' diverged at step 1 of 5: "), err
  assert "loss exploded" in err[0] and "--config.on_divergence=rollback" in err[0]
  assert not os.path.exists(os.path.join(tmp_path, "results.json"))
  assert "--config.rollback_factor=0.5" in err[0]
  # Rolled back with a cut to 1e-3 of the rate each time: 1e3, 1, then 1e-3 learns.
  out = faults.run(faults.TINY, str(tmp_path / "rb"), "--config.learners=er",
                   "--config.hparams.er.lr=1e6", "--config.on_divergence=rollback",
                   "--config.rollback_factor=0.001")
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(tmp_path, "rb", "results.json")) as f:
    er = json.load(f)["runs"]["er"]
  assert [r["lr_scale"] for r in er["rollbacks"]] == pytest.approx([1e-3, 1e-6, 1e-9])
  assert er["final_accuracy"] > 0.5  # chance 0.1: the run recovered
