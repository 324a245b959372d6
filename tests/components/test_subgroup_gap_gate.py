"""SubgroupGapGate's arithmetic on crafted TFMA metrics (no TFMA run)."""

import math

import pytest

from components import subgroup_gap_gate as gap

NAN = float('nan')


def _metrics(family, groups, metric='balanced_accuracy', class_id=None):
  """SliceMetrics for {group: (examples, value)} of one family."""
  values = {((), 'example_count', None): sum(n for n, _ in groups.values()),
            ((), metric, class_id): 0.5}
  for group, (examples, value) in groups.items():
    key = ((family, group),)
    values[(key, 'example_count', None)] = float(examples)
    values[(key, metric, class_id)] = value
    values[(key, 'accuracy', None)] = 0.99  # Another metric: ignored.
  # A cross slice of the family: not a group of it.
  values[(((family, 'x'), ('sex', 'male')), metric, class_id)] = 0.0
  return values


def test_gap_is_max_minus_min_over_groups_with_enough_examples():
  values = _metrics('age_band', {'<30': (40, 0.60), '30-44': (35, 0.45),
                                 '>=75': (5, 0.05), 'unknown': (50, 0.10)})
  report = gap.evaluate_gaps(values, ['age_band'], 'balanced_accuracy', None,
                             max_gap=0.2, min_examples=30)
  (gate,) = report['gates']
  assert set(gate['groups']) == {'<30', '30-44'}
  assert gate['value'] == pytest.approx(0.15)
  assert gate['passed'] and report['blessed']
  assert gate['excluded']['>=75']['reason'] == 'fewer than 30 examples'
  assert gate['excluded']['unknown']['reason'] == 'unknown is not a group'
  assert gate['groups']['<30'] == {'value': 0.6, 'examples': 40}
  assert '<30 0.6000 - 30-44 0.4500 = 0.1500 <= 0.2000' in gate['note']


def test_bound_just_below_the_gap_fails_and_says_by_how_much():
  values = _metrics('sex', {'female': (40, 0.70), 'male': (40, 0.52)})
  passed = gap.evaluate_gaps(values, ['sex'], 'balanced_accuracy', None,
                             max_gap=0.18 + 1e-9, min_examples=30)
  failed = gap.evaluate_gaps(values, ['sex'], 'balanced_accuracy', None,
                             max_gap=0.18 - 1e-9, min_examples=30)
  assert passed['blessed'] and not failed['blessed']
  (line,) = gap.failures(failed)
  assert line.startswith('subgroup_gap [sex] balanced_accuracy: gap 0.1800 '
                         '> bound 0.1800 (by 0.0000')


def test_unknown_groups_count_when_not_excluded():
  values = _metrics('sex', {'female': (40, 0.70), 'unknown': (40, 0.30)})
  report = gap.evaluate_gaps(values, ['sex'], 'balanced_accuracy', None,
                             max_gap=0.2, min_examples=30,
                             exclude_unknown=False)
  assert report['gates'][0]['value'] == pytest.approx(0.4)
  assert not report['blessed']


def test_fewer_than_two_groups_is_not_measurable_and_passes():
  values = _metrics('localization', {'back': (100, 0.9), 'face': (3, 0.0)})
  report = gap.evaluate_gaps(values, ['localization', 'sex'],
                             'balanced_accuracy', None, max_gap=0.0,
                             min_examples=30)
  site, sex = report['gates']
  assert site['value'] is None and site['passed']
  assert site['note'].startswith('not measurable: 1 group(s)')
  assert sex['groups'] == {} and sex['passed']  # No such slices at all.
  assert report['blessed']


def test_class_metric_and_undefined_values():
  values = _metrics('sex', {'female': (40, 0.8), 'male': (40, 0.3),
                            'other': (40, NAN)},
                    metric='melanoma_recall', class_id=4)
  report = gap.evaluate_gaps(values, ['sex'], 'melanoma_recall', 4,
                             max_gap=0.4, min_examples=30)
  (gate,) = report['gates']
  assert gate['metric'] == 'melanoma_recall (classId:4)'
  assert gate['excluded']['other']['reason'] == 'melanoma_recall undefined'
  assert gate['excluded']['other']['value'] is None
  assert math.isclose(gate['value'], 0.5) and not gate['passed']
  # The same numbers without the class id: the metric is not there.
  report = gap.evaluate_gaps(values, ['sex'], 'melanoma_recall', None,
                             max_gap=0.4, min_examples=30)
  assert report['gates'][0]['value'] is None
