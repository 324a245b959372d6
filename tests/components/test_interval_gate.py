"""IntervalGate's intervals and gates on constructed predictions."""

import numpy as np
import pytest

from components import interval_gate
from components import intervals

CLASSES = ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']
GATE = dict(max_gap=0.10, min_examples=30, min_class_examples=5,
            exclude_unknown=True, draws=600, seed=0, confidence=0.95)


def _test_set(rng, n_lesions=500, images=2, p_correct=0.7):
  """Lesions of 1-3 images; a sex and age band per lesion; class mix by age."""
  lesions = np.arange(n_lesions)
  sex = rng.choice(['female', 'male', 'unknown'], n_lesions, p=[.47, .47, .06])
  age = rng.choice(['<30', '30-44', '>=75'], n_lesions, p=[.3, .5, .2])
  # Class mix differs wildly by age band (as in HAM10000): nevi in the
  # young, keratoses and carcinomas in the old.
  mix = {'<30': [.01, .01, .04, .01, .08, .84, .01],
         '30-44': [.02, .03, .07, .01, .1, .76, .01],
         '>=75': [.15, .2, .3, .02, .25, .06, .02]}
  labels = np.array([rng.choice(7, p=mix[a]) for a in age])
  counts = rng.integers(1, images + 2, n_lesions)
  rep = lambda a: np.repeat(a, counts)
  return (rep(labels), rep(lesions).astype(str),
          {'sex': rep(sex), 'age_band': rep(age)})


def _predict(rng, labels, p_correct):
  """Probabilities whose top-1 is right with probability p_correct (per
  example: an array), else a random other class."""
  p_correct = np.broadcast_to(p_correct, labels.shape)
  right = rng.random(len(labels)) < p_correct
  other = (labels + rng.integers(1, 7, len(labels))) % 7
  top = np.where(right, labels, other)
  probabilities = rng.dirichlet(np.ones(7), len(labels)) * 0.4
  probabilities[np.arange(len(labels)), top] += 0.6
  return probabilities


def _gates(labels, probabilities, lesions, slices, **overrides):
  return interval_gate.subgroup_gates(
      labels, probabilities, lesions, slices, list(slices), CLASSES,
      overrides.pop('metric', 'balanced_accuracy'), 'mel',
      **dict(GATE, **overrides))


def test_a_fair_model_passes_although_groups_differ_in_class_mix():
  rng = np.random.default_rng(0)
  labels, lesions, slices = _test_set(rng)
  # A fair model: each class recalled at its own rate, whatever the group.
  per_class = np.array([.4, .6, .5, .3, .6, .9, .7])
  probabilities = _predict(rng, labels, per_class[labels])
  gates = _gates(labels, probabilities, lesions, slices)
  assert [g['passed'] for g in gates] == [True, True], gates
  # Overall balanced accuracy per age band differs by case mix alone ...
  ba = {a: intervals.balanced_accuracy(
      labels[slices['age_band'] == a], probabilities[slices['age_band'] == a],
      np.ones((1, int((slices['age_band'] == a).sum()))))[0]
        for a in ('<30', '>=75')}
  # ... but the gate compares like with like, so it does not fail.
  age = gates[1]
  assert age['slice_family'] == 'age_band' and not age['failed_groups']
  assert set(age['groups']) == {'<30', '30-44', '>=75'}
  assert np.isfinite(ba['<30']) and np.isfinite(ba['>=75'])
  # Unknown is listed, not compared; the intervals are Bonferroni-widened.
  assert gates[0]['excluded']['unknown']['reason'] == 'unknown is not a group'
  assert gates[0]['confidence'] == pytest.approx(1 - 0.05 / 5)


def test_a_small_noisy_group_passes_and_a_tiny_one_is_listed():
  rng = np.random.default_rng(1)
  labels, lesions, slices = _test_set(rng)
  site = np.where(rng.random(len(labels)) < 0.04, 'foot', 'trunk')
  site[:12] = 'ear'  # Too small to measure.
  probabilities = _predict(rng, labels, 0.7)
  # The foot group is a little worse by chance (a few more misses).
  foot = np.flatnonzero(site == 'foot')[:6]
  probabilities[foot] = np.roll(probabilities[foot], 1, axis=1)
  (gate,) = _gates(labels, probabilities, lesions, {'localization': site})
  assert gate['passed'], gate['note']
  assert 'foot' in gate['groups']
  assert gate['excluded']['ear']['reason'] == 'fewer than 30 test images'
  difference = gate['groups']['foot']['difference']
  assert difference['lower'] < -0.10 < difference['upper']  # wide, not sure


def test_a_group_made_truly_worse_fails_and_is_named():
  rng = np.random.default_rng(2)
  labels, lesions, slices = _test_set(rng)
  degraded = np.where(slices['sex'] == 'male', 0.35, 0.8)
  probabilities = _predict(rng, labels, degraded)
  gates = _gates(labels, probabilities, lesions, slices)
  sex = gates[0]
  assert not sex['passed'] and sex['failed_groups'] == ['male']
  assert sex['groups']['male']['difference']['upper'] < -0.10
  assert 'male' in sex['note'] and 'lies below -0.100' in sex['note']
  (line,) = interval_gate.failures({'gates': gates})
  assert line.startswith('subgroup gate [sex]: male:')
  # The age families stay fair: the same degradation hits every age band.
  assert gates[1]['passed']


def test_melanoma_recall_metric_needs_enough_melanomas_in_the_group():
  rng = np.random.default_rng(3)
  labels, lesions, slices = _test_set(rng)
  probabilities = _predict(rng, labels, 0.7)
  gates = _gates(labels, probabilities, lesions, slices,
                 metric='melanoma_recall', min_class_examples=200)
  assert all(g['passed'] and not g['groups'] for g in gates)
  assert all('no class with >= 200 lesions' in e['reason']
             for g in gates for k, e in g['excluded'].items()
             if k != 'unknown')
  with pytest.raises(ValueError, match='metric must be one of'):
    _gates(labels, probabilities, lesions, slices, metric='accuracy')


def test_regression_gate_judges_the_paired_difference():
  rng = np.random.default_rng(4)
  labels, lesions, _ = _test_set(rng)
  baseline = _predict(rng, labels, 0.75)
  kwargs = dict(max_drop=0.02, draws=600, seed=0, confidence=0.95)
  # Nearly the same model (a few answers differ): passes.
  similar = baseline.copy()
  similar[:15] = np.roll(similar[:15], 1, axis=1)
  same = interval_gate.regression_gate(labels, similar, baseline, lesions,
                                       **kwargs)
  assert same['passed'] and same['difference']['lower'] < 0
  # Truly worse (a fifth of the right answers turned wrong): fails.
  worse = baseline.copy()
  right = np.flatnonzero(baseline.argmax(1) == labels)
  flip = rng.choice(right, len(right) // 5, replace=False)
  worse[flip] = np.roll(worse[flip], 1, axis=1)
  refused = interval_gate.regression_gate(labels, worse, baseline, lesions,
                                          **kwargs)
  assert not refused['passed']
  assert refused['difference']['upper'] < -0.02
  assert 'lies wholly below -0.020' in refused['note']
  none = interval_gate.regression_gate(labels, worse, None, lesions, **kwargs)
  assert none['passed'] and none['difference'] is None


def test_intervals_json_overall_and_per_group():
  rng = np.random.default_rng(5)
  labels, lesions, slices = _test_set(rng, n_lesions=150)
  probabilities = _predict(rng, labels, 0.7)
  result = interval_gate.compute_intervals(
      labels, probabilities, lesions, slices, CLASSES, 'mel', draws=200,
      seed=0, confidence=0.95, calibration_bins=10)
  overall = result['overall']
  assert overall['examples'] == len(labels) and overall['lesions'] == 150
  ba = overall['metrics']['balanced_accuracy']
  assert set(ba) == {'value', 'lower', 'upper'}
  assert ba['lower'] <= ba['value'] <= ba['upper']
  assert ba['value'] == pytest.approx(intervals.balanced_accuracy(
      labels, probabilities, np.ones((1, len(labels))))[0])
  for key, _ in interval_gate.HEADLINE_METRICS:
    assert key in overall['metrics']
  groups = {(e['feature'], e['group']) for e in result['slices']}
  assert ('sex', 'female') in groups and ('age_band', '>=75') in groups
  assert sum(e['examples'] for e in result['slices']
             if e['feature'] == 'sex') == len(labels)


def test_a_group_of_few_lesions_gets_no_interval():
  rng = np.random.default_rng(6)
  labels, lesions, slices = _test_set(rng, n_lesions=100)
  site = np.where(np.isin(lesions, ['0', '1', '2']), 'ear', 'back')
  result = interval_gate.compute_intervals(
      labels, _predict(rng, labels, 0.7), lesions, {'localization': site},
      CLASSES, 'mel', draws=100, seed=0, confidence=0.95,
      calibration_bins=10)
  ear = next(e for e in result['slices'] if e['group'] == 'ear')
  assert ear['lesions'] == 3 < interval_gate.MIN_LESIONS
  accuracy = ear['metrics']['accuracy']
  assert accuracy['value'] is not None
  assert accuracy['lower'] is None and accuracy['upper'] is None
  assert intervals.text(accuracy).endswith('[n/a]')
