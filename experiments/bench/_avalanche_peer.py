r"""Avalanche's side of ``startup.py --peer=avalanche``: the same stream, the same work, in torch.

Run by startup.py in an interpreter that has ``avalanche-lib`` and ``torch`` (not cljax's):

    PEER_PYTHON _avalanche_peer.py --data=mnist5k.npz --out=peer.json --runs=er,slda

The data is startup.py's mnist5k (4,000 train / 1,000 test real MNIST digits, written as npz),
split class-incrementally into 5 experiences of 2 classes (classes 0-1, 2-3, ...), evaluated
on the whole test stream after each experience (as cljax's runner evaluates at each step end).

* er: ``Naive`` + ``ReplayPlugin(mem_size=500)``, Adam 1e-3, the same CNN as cljax's ``cnn``
  (two 3x3 conv blocks 16/32 channels with ReLU and 2x2 average pooling, Linear 128, Linear 10),
  200 optimizer steps per experience (the demo's ``passes_per_step``), in two settings:
  ``32+32`` (32 new + 32 replayed rows a step: 8 epochs of 25 steps) and ``16+16`` (the same 32
  rows a step as cljax's ER, half new half replayed: 4 epochs of 50 steps).
* slda: ``StreamingLDA`` on 512-d features (a frozen random linear projection of the 784
  pixels, as cljax's bench on 512-d features), batch 256, one pass, shrinkage 1e-4.

Each is timed as a whole process would see it: from building the strategy to the last
evaluation (torch has nothing to compile); torch runs on the CPUs it is given (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import time

_T0 = time.perf_counter()
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from torch import nn  # pylint: disable=wrong-import-position


def _cnn() -> nn.Module:
  return nn.Sequential(
      nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
      nn.Flatten(), nn.Linear(7 * 7 * 32, 128), nn.ReLU(), nn.Linear(128, 10))


def _benchmark(d):
  from avalanche.benchmarks import nc_benchmark  # pylint: disable=import-outside-toplevel
  from torch.utils.data import TensorDataset  # pylint: disable=import-outside-toplevel

  def tensors(x, y):
    x = torch.tensor(np.asarray(x, np.float32).reshape(-1, 28, 28, 1)).permute(0, 3, 1, 2)
    ds = TensorDataset(x, torch.tensor(np.asarray(y, np.int64)))
    ds.targets = torch.tensor(np.asarray(y, np.int64))
    return ds

  return nc_benchmark(tensors(d["x_train"], d["y_train"]), tensors(d["x_test"], d["y_test"]),
                      n_experiences=5, task_labels=False, fixed_class_order=list(range(10)))


def run_er(d, new: int, replayed: int, epochs: int) -> dict:
  from avalanche.training import Naive  # pylint: disable=import-outside-toplevel
  from avalanche.training.plugins import ReplayPlugin  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  bench = _benchmark(d)
  model = _cnn()
  strategy = Naive(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                   criterion=nn.CrossEntropyLoss(), train_mb_size=new, train_epochs=epochs,
                   eval_mb_size=250, plugins=[ReplayPlugin(mem_size=500, batch_size_mem=replayed)],
                   evaluator=None)
  acc = []
  for exp in bench.train_stream:
    strategy.train(exp)
    res = strategy.eval(bench.test_stream)
    acc.append(res)
  wall = time.perf_counter() - t0
  return {"wall_s": wall, "final_accuracy": _accuracy(model, d)}


def _accuracy(model, d) -> float:
  with torch.no_grad():
    x = torch.tensor(np.asarray(d["x_test"], np.float32).reshape(-1, 28, 28, 1)).permute(0, 3, 1, 2)
    out = model(x) if not hasattr(model, "predict") else model.predict(x)
  return float((out.argmax(1).numpy() == np.asarray(d["y_test"])).mean())


def run_slda(d) -> dict:
  from avalanche.training import StreamingLDA  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  bench = _benchmark(d)
  torch.manual_seed(0)
  proj = nn.Sequential(nn.Flatten(), nn.Linear(784, 512))
  for p in proj.parameters():
    p.requires_grad_(False)
  strategy = StreamingLDA(slda_model=proj, criterion=nn.CrossEntropyLoss(), input_size=512,
                          num_classes=10, shrinkage_param=1e-4, streaming_update_sigma=True,
                          train_mb_size=256, eval_mb_size=250, evaluator=None)
  for exp in bench.train_stream:
    strategy.train(exp)
    strategy.eval(bench.test_stream)
  return {"wall_s": time.perf_counter() - t0}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--runs", default="er,slda")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--er_settings", default="32+32,16+16", help="new+replayed rows of ER's steps")
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  d = dict(np.load(a.data))
  import avalanche  # pylint: disable=import-outside-toplevel
  from avalanche import training  # pylint: disable=import-outside-toplevel,unused-import
  out = {"torch": torch.__version__, "avalanche": avalanche.__version__,
         "import_s": time.perf_counter() - _T0}
  runs = a.runs.split(",")
  if "er" in runs:
    # 200 optimizer steps per experience of 800 examples: 8 epochs of 25 or 4 epochs of 50.
    settings = {"32+32": (32, 32, 8), "16+16": (16, 16, 4)}
    out["er"] = {k: run_er(d, *settings[k]) for k in a.er_settings.split(",")}
    print("avalanche er", out["er"], flush=True)
  if "slda" in runs:
    out["slda"] = {"batch 256": run_slda(d)}
    print("avalanche slda", out["slda"], flush=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
