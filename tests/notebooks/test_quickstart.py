"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (as Colab would run it)."""

import pytest

from tests.notebooks.executor import execute, images


@pytest.mark.slow
def test_quickstart_executes(tmp_path):
  nb, text = execute("quickstart.ipynb", tmp_path)
  assert "restored state predicts identically: True" in text
  finals = {line.split(":")[0].strip(): float(line.split("final accuracy")[1].split()[0])
            for line in text.splitlines() if "final accuracy" in line}
  assert finals["er"] > finals["finetune"] + 0.3, finals
  assert finals["slda"] > 0.9, finals
  cv = float(text.split("slda estimator, 5-fold accuracy:")[1].split()[0])
  assert cv > 0.85, cv  # 0.897 measured (5-fold on the 1,437 training digits)
  assert images(nb), "the accuracy plot"
