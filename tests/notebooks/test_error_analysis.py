"""notebooks/error_analysis.ipynb runs top to bottom in a fresh kernel (as Colab would run it), on
real digits: two learners through the experiment runner, their final models restored from the
checkpoints, the diagnostic figures, the worst classes and the most confident mistakes."""

import re

import pytest

from tests.notebooks.executor import execute, images


@pytest.mark.slow
def test_error_analysis_executes(tmp_path):
  nb, text = execute("error_analysis.ipynb", tmp_path, timeout=900)
  # the restored final models are the ones results.json describes
  for name in ("finetune", "er"):
    m = re.search(rf"{name}: restored step 4, test accuracy ([\d.]+) "
                  rf"\(results.json final_top1 ([\d.]+)\)", text)
    assert m and m.group(1) == m.group(2), text
  figures = {name: re.search(rf"{name}: macro ROC AUC ([\d.]+), macro average precision "
                             rf"([\d.]+), ECE ([\d.]+)", text) for name in ("finetune", "er")}
  auc = {n: float(m.group(1)) for n, m in figures.items()}
  ece = {n: float(m.group(3)) for n, m in figures.items()}
  assert auc["er"] > 0.95 and auc["er"] > auc["finetune"], auc  # replay ranks the old classes
  assert ece["finetune"] > ece["er"], ece  # fine-tuning is confidently wrong on old classes
  assert text.count("the 3 classes of lowest recall") == 2
  assert re.search(r"er: \d+ mistakes; most confident: \d->\d \(0\.\d\d\)", text), text
  assert len(images(nb)) == 5, len(images(nb))  # loss, ROC, calibration, boundary; confident mistakes
