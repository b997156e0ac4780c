"""Batch allocation: how the rows of one training batch split between data sources.

DietCL's joint batches draw from three sources (unlabeled rows for the MAE term, the step's
labelled rows, the buffer); the paper and the reference code split them differently. A pure
function of the batch size, so learners, FLOP counts and benchmarks share one rule.
"""

from __future__ import annotations


def source_split(batch_size: int, allocation: str,
                 reconstruction: bool = True) -> tuple[int, int, int]:
  """Rows of a joint batch from (unlabeled, current labeled, buffer) once a buffer exists.

  paper: thirds. reference_code: ``int(0.4 B)`` unlabeled (``unlabeled_data_ratio``), the rest
  halved between current labels and buffer (``trainer/diet.py`` lines 36-50; 102 / 77 / 77 of
  256); an odd rest gives the extra row to the buffer, so the three always sum to B. Without
  ``reconstruction`` (an ablation) there are no unlabeled rows and the labels share the batch.
  """
  if not reconstruction:
    nu = 0
  elif allocation == "paper":
    nu = batch_size // 3
  else:
    nu = int(batch_size * 0.4)
  nl = batch_size // 3 if allocation == "paper" and reconstruction else (batch_size - nu) // 2
  return nu, nl, batch_size - nu - nl
