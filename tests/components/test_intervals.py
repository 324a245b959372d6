"""Lesion-level bootstrap intervals (components/intervals.py)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from components import intervals


def _clustered(rng, n_lesions, images_per_lesion, p_correct, n_classes=3):
  """Lesions whose images share one label and one correct/wrong outcome."""
  labels = rng.integers(0, n_classes, n_lesions)
  correct = rng.random(n_lesions) < p_correct
  wrong = (labels + rng.integers(1, n_classes, n_lesions)) % n_classes
  preds = np.where(correct, labels, wrong)
  rep = lambda a: np.repeat(a, images_per_lesion)
  return rep(labels), rep(preds), rep(np.arange(n_lesions))


def test_unit_weights_equal_scikit_learn():
  rng = np.random.default_rng(3)
  y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
  ones = np.ones((1, 200))
  assert intervals.balanced_accuracy(y, p, ones)[0] == pytest.approx(
      skm.balanced_accuracy_score(y, p), abs=1e-12)
  assert intervals.accuracy(y, p, ones)[0] == pytest.approx(
      skm.accuracy_score(y, p), abs=1e-12)
  assert intervals.class_recall(2)(y, p, ones)[0] == pytest.approx(
      skm.recall_score(y, p, labels=[2], average=None)[0], abs=1e-12)


def test_seeded_and_reproducible():
  y, p, g = _clustered(np.random.default_rng(0), 80, 2, 0.7)
  a = intervals.bootstrap(intervals.balanced_accuracy, y, p, g, seed=5)
  b = intervals.bootstrap(intervals.balanced_accuracy, y, p, g, seed=5)
  c = intervals.bootstrap(intervals.balanced_accuracy, y, p, g, seed=6)
  assert a == b and a != c
  assert a.lower < a.value < a.upper
  assert a.as_dict() == {'value': a.value, 'lower': a.lower, 'upper': a.upper}
  assert str(a) == f'{a.value:.3f} [{a.lower:.3f}, {a.upper:.3f}]'


def test_lesion_bootstrap_is_wider_than_image_bootstrap_when_lesions_repeat():
  y, p, g = _clustered(np.random.default_rng(1), 100, 4, 0.7)
  by_lesion = intervals.bootstrap(intervals.accuracy, y, p, g)
  by_image = intervals.bootstrap(intervals.accuracy, y, p, None)
  width = lambda i: i.upper - i.lower
  # Four images per lesion with one outcome: about sqrt(4) = 2x wider.
  assert width(by_lesion) > 1.6 * width(by_image)


def test_coverage_is_95_percent_over_lesions_and_not_over_images():
  rng = np.random.default_rng(2026)
  truth, sims = 0.7, 300
  covered = {'lesion': 0, 'image': 0}
  for s in range(sims):
    y, p, g = _clustered(rng, 300, 3, truth)
    for name, groups in (('lesion', g), ('image', None)):
      i = intervals.bootstrap(intervals.accuracy, y, p, groups, draws=400,
                              seed=s)
      covered[name] += i.lower <= truth <= i.upper
  # Measured: 0.957 over lesions, 0.730 over images (seed 2026).
  assert abs(covered['lesion'] / sims - 0.95) <= 0.03, covered
  # Resampling images treats 3 copies of an outcome as 3 facts: it under-covers.
  assert covered['image'] / sims < 0.85, covered


def test_paired_difference_of_identical_and_degraded_models():
  y, p, g = _clustered(np.random.default_rng(4), 120, 2, 0.8)
  same = intervals.paired_difference(intervals.balanced_accuracy, y, p, p, g)
  assert (same.value, same.lower, same.upper) == (0.0, 0.0, 0.0)
  worse = p.copy()
  worse[y == 0] = 1  # Class 0 is never predicted any more.
  diff = intervals.paired_difference(intervals.balanced_accuracy, y, worse, p, g)
  assert diff.upper < 0 and diff.lower <= diff.value <= diff.upper


def test_a_class_absent_from_the_data_gives_no_interval():
  y = np.array([0, 0, 1, 1])
  i = intervals.bootstrap(intervals.class_recall(2), y, y, None, draws=50)
  assert np.isnan(i.value) and np.isnan(i.lower) and np.isnan(i.upper)


def test_groups_must_match_the_examples():
  with pytest.raises(ValueError, match='groups has shape'):
    intervals.bootstrap(intervals.accuracy, [0, 1], [0, 1], ['a'])


def _probabilities(rng, n, n_classes):
  logits = rng.normal(size=(n, n_classes))
  e = np.exp(logits)
  return e / e.sum(axis=1, keepdims=True)


def test_probability_metrics_equal_scikit_learn_with_unit_weights():
  rng = np.random.default_rng(7)
  y = rng.integers(0, 4, 300)
  prob = _probabilities(rng, 300, 4)
  prob[y == 1, 1] += 0.5  # some signal, so AUCs are not all 0.5
  prob = prob / prob.sum(axis=1, keepdims=True)
  pred = prob.argmax(1)
  ones = np.ones((1, 300))
  assert intervals.macro_f1(y, prob, ones)[0] == pytest.approx(
      skm.f1_score(y, pred, average='macro'), abs=1e-12)
  assert intervals.class_precision(1)(y, prob, ones)[0] == pytest.approx(
      skm.precision_score(y, pred, labels=[1], average=None)[0], abs=1e-12)
  assert intervals.macro_auc(y, prob, ones)[0] == pytest.approx(
      skm.roc_auc_score(y, prob, multi_class='ovr', average='macro'),
      abs=1e-12)
  # Ties count half, as in scikit-learn.
  tied = np.round(prob, 1)
  assert intervals.class_auc(2)(y, tied, ones)[0] == pytest.approx(
      skm.roc_auc_score(y == 2, tied[:, 2]), abs=1e-12)
  # ECE: equal-width bins of the top-1 confidence.
  confidence, correct = prob.max(1), (pred == y).astype(float)
  index = np.minimum((confidence * 10).astype(int), 9)
  expected = sum(abs((correct - confidence)[index == b].sum())
                 for b in range(10)) / 300
  assert intervals.expected_calibration_error(10)(y, prob, ones)[0] == (
      pytest.approx(expected, abs=1e-12))


def test_weights_count_like_repeated_examples():
  rng = np.random.default_rng(8)
  y = rng.integers(0, 3, 50)
  prob = _probabilities(rng, 50, 3)
  counts = rng.integers(0, 3, 50)
  repeated = np.repeat(np.arange(50), counts)
  for name, metric in intervals.headline_metrics(['a', 'b', 'c'], 'b').items():
    weighted = metric(y, prob, counts[None, :].astype(float))[0]
    expanded = metric(y[repeated], prob[repeated],
                      np.ones((1, len(repeated))))[0]
    assert weighted == pytest.approx(expanded, abs=1e-12), name


def test_bootstrap_many_shares_draws_and_names_every_metric():
  rng = np.random.default_rng(9)
  y = np.repeat(rng.integers(0, 3, 60), 2)
  prob = _probabilities(rng, 120, 3)
  groups = np.repeat(np.arange(60), 2)
  metrics = intervals.headline_metrics(['a', 'b', 'c'], 'c')
  out = intervals.bootstrap_many(metrics, y, prob, groups, draws=200, seed=1)
  assert set(out) == {'balanced_accuracy', 'accuracy', 'macro_f1',
                      'macro_auc', 'expected_calibration_error',
                      'melanoma_recall', 'recall/a', 'recall/b', 'recall/c',
                      'precision/a', 'precision/b', 'precision/c'}
  assert out['melanoma_recall'] == out['recall/c']
  one = intervals.bootstrap(metrics['accuracy'], y, prob, groups, draws=200,
                            seed=1)
  assert out['accuracy'] == one
  for interval in out.values():
    assert interval.lower <= interval.value <= interval.upper


def test_on_subset_scores_one_group_inside_a_whole_set_draw():
  rng = np.random.default_rng(10)
  y, p = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
  mask = rng.random(100) < 0.4
  ones = np.ones((1, 100))
  assert intervals.on_subset(intervals.accuracy, mask)(y, p, ones)[0] == (
      pytest.approx(skm.accuracy_score(y[mask], p[mask]), abs=1e-12))
  with pytest.raises(ValueError, match='no examples'):
    intervals.bootstrap(intervals.accuracy, [], [], None)
