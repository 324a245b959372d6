"""benchmarks/operating_points.py on synthetic predictions: lesion-disjoint
halves, cross-fitted prior correction, the trade-off curve."""

import numpy as np
import pytest

from benchmarks import operating_points
from benchmarks import real_data_quality
from models import calibration

NAMES = ['nv', 'mel', 'bkl', 'df']


def _predictions(n=3000, seed=0):
  """Two images per lesion; the 'model' answers the posterior under the
  case mix (the accuracy-optimal decision), so it favours the common class
  over balanced accuracy."""
  rng = np.random.default_rng(seed)
  prior = np.array([0.6, 0.2, 0.15, 0.05])
  labels = np.repeat(rng.choice(4, size=n // 2, p=prior), 2)
  lesions = np.repeat([f'L{i}' for i in range(n // 2)], 2)
  # x ~ N(2 e_y, I): log p(x | y = k) = 2 x_k + const, so these logits are
  # the exact posterior's.
  x = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[labels]
  z = 2.0 * x + np.log(prior)
  p = np.exp(z)
  return labels, p / p.sum(1, keepdims=True), lesions, prior


def test_halves_split_lesions_not_images():
  _, _, lesions, _ = _predictions()
  first, second = operating_points.lesion_halves(lesions, seed=3)
  assert not (first & second).any() and (first | second).all()
  assert not set(lesions[first]) & set(lesions[second])
  assert 0.4 < first.mean() < 0.6
  again, _ = operating_points.lesion_halves(lesions, seed=3)
  np.testing.assert_array_equal(first, again)


def test_cross_fitting_scores_each_half_with_the_other_halfs_offsets():
  labels, probabilities, lesions, _ = _predictions()
  out = operating_points.cross_fitted(probabilities, labels, lesions, seed=1)
  first, second = operating_points.lesion_halves(lesions, seed=1)
  offsets, _ = calibration.fit_prior_correction(probabilities[second],
                                                labels[second])
  np.testing.assert_allclose(
      out[first], calibration.corrected(probabilities[first], 1.0, offsets))


def test_operating_points_of_a_model_calibrated_to_the_case_mix():
  labels, probabilities, lesions, prior = _predictions()
  result = operating_points.operating_points(labels, probabilities, lesions,
                                             NAMES, prior, repeats=2)
  served = result['as_served']
  assert served == real_data_quality.decision_metrics(labels, probabilities,
                                                      NAMES)
  crossed = result['prior_correction_cross_fitted']
  assert crossed['balanced_accuracy'] > served['balanced_accuracy'] + 0.05
  assert crossed['accuracy'] < served['accuracy']
  in_sample = result['prior_correction_in_sample']
  assert in_sample['balanced_accuracy'] > served['balanced_accuracy'] + 0.03
  # The posterior under the case mix needs -log(prior) (up to a shift) to
  # become the posterior under equal prevalence: the fit recovers it.
  offsets = np.array([in_sample['offsets'][name] for name in NAMES])
  expected = -np.log(prior)
  np.testing.assert_allclose(offsets - offsets.mean(),
                             expected - expected.mean(), atol=0.15)
  # Melanoma first in every per-class recall.
  assert list(served['recall'])[0] == 'mel'
  assert list(crossed['recall']) == list(served['recall'])
  curve = {point['lambda']: point for point in result['tradeoff']}
  assert curve[0.0]['balanced_accuracy'] == pytest.approx(
      served['balanced_accuracy'])
  # The served model is accuracy-optimal: every move along the curve costs
  # accuracy; away from the prior balanced accuracy rises, towards it falls.
  assert all(point['accuracy'] <= curve[0.0]['accuracy'] + 0.005
             for point in curve.values())
  assert (curve[-0.5]['balanced_accuracy'] > curve[0.0]['balanced_accuracy']
          > curve[1.0]['balanced_accuracy'])
  assert result['lesions'] == len(labels) // 2
