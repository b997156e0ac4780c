"""Runs a notebook of notebooks/ top to bottom in a fresh kernel, as Colab would."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def execute(name: str, workdir, timeout: int = 600) -> tuple:
  """(the executed notebook, the text of all its code cells' outputs); skipped without
  nbformat/nbclient (the test extra). ``workdir``: the kernel's working directory."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(workdir)}})
  client.execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  return nb, text


def images(nb) -> list:
  """The PNG images the notebook displayed, in order."""
  return [o for c in nb.cells for o in c.get("outputs", [])
          if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
