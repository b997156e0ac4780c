"""The head-to-head table reads the runner's state size and latency from each seed's results."""

import json
import os

from experiments.studies import frozen_features


def _results(final, size, med, p99):
  return {"runs": {"ncm": {"final_accuracy": final, "average_accuracy": final, "omega": 1.0,
                           "examples_per_s": 100.0, "state_bytes": size,
                           "latency_ms": {"median": med, "p99": p99, "n": 100}, "steps": []}}}


def test_table_means_over_seeds_with_state_bytes_and_latency(tmp_path):
  for seed, (final, med, p99) in enumerate([(0.6, 1.0, 3.0), (0.8, 2.0, 5.0)]):
    os.makedirs(tmp_path / "ci" / f"seed{seed}")
    with open(tmp_path / "ci" / f"seed{seed}" / "results.json", "w") as f:
      json.dump(_results(final, 51240, med, p99), f)
  rows = frozen_features.table([str(tmp_path / "ci")]).splitlines()
  assert rows[2] == ("| ci | ncm | 2 | 0.700 ± 0.100 | 0.700 ± 0.100 | 1.000 ± 0.000 | "
                     "100 ± 0 | 51,240 | 1.50 / 4.00 |")
