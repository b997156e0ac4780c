"""Ω in the result record: top-1 or top-5, at step ends (default) or at every evaluation point."""

import pytest

from cljax.eval import results


def _pt(seen, end, top1, top5):
  return {"step": 0, "examples_seen": seen, "step_end": end, "accuracy": top1, "top5": top5}


def _runs():
  # offline is retrained only at step ends: its mid-step points (100, 300) score a stale model
  offline = [_pt(100, False, 0.50, 0.90), _pt(200, True, 0.80, 1.00),
             _pt(300, False, 0.40, 0.80), _pt(400, True, 0.75, 0.95)]
  er = [_pt(100, False, 0.60, 0.85), _pt(200, True, 0.60, 0.90),
        _pt(300, False, 0.50, 0.70), _pt(400, True, 0.45, 0.76)]
  return {"er": {"eval_points": er}, "offline": {"eval_points": offline}}


def test_omega_step_ends_top1_by_hand():
  runs = _runs()
  results.add_omega(runs)
  assert runs["er"]["omega"] == pytest.approx((0.60 / 0.80 + 0.45 / 0.75) / 2)
  assert runs["offline"]["omega"] == pytest.approx(1.0)
  assert (runs["er"]["omega_topk"], runs["er"]["omega_points"]) == (1, "step_ends")


def test_omega_top5_and_all_points_by_hand():
  runs = _runs()
  results.add_omega(runs, topk=5)
  assert runs["er"]["omega"] == pytest.approx((0.90 / 1.00 + 0.76 / 0.95) / 2)
  results.add_omega(runs, topk=1, points="all")
  assert runs["er"]["omega"] == pytest.approx(
      (0.60 / 0.50 + 0.60 / 0.80 + 0.50 / 0.40 + 0.45 / 0.75) / 4)
  assert runs["er"]["omega_points"] == "all"


def test_omega_is_none_without_reference_or_with_other_points():
  runs = _runs()
  del runs["offline"]
  results.add_omega(runs)
  assert runs["er"]["omega"] is None
  runs = _runs()
  runs["er"]["eval_points"][1]["examples_seen"] = 201  # not the reference's points
  results.add_omega(runs)
  assert runs["er"]["omega"] is None
  with pytest.raises(ValueError, match="topk"):
    results.add_omega(runs, topk=3)


def test_omega_against_another_reference_or_none():
  """eval.omega_reference: Ω against any run (here er), or none at all ("")."""
  runs = _runs()
  results.add_omega(runs, reference="er")
  assert runs["er"]["omega"] == pytest.approx(1.0)
  assert runs["offline"]["omega"] == pytest.approx((0.80 / 0.60 + 0.75 / 0.45) / 2)
  assert runs["offline"]["omega_reference"] == "er"
  results.add_omega(runs, reference="")
  assert runs["er"]["omega"] is None and runs["offline"]["omega"] is None
  assert runs["er"]["omega_reference"] == ""
