"""IntervalGate: 95% intervals on the test split, and the gates that use them.

TFMA's Evaluator computes the metrics and its value thresholds (minimum
balanced accuracy, minimum melanoma recall) on the overall slice.  TFMA can
also compute confidence intervals, but its bootstrap and jackknife resample
*examples*; HAM10000 has up to six images of one lesion, which are not
independent, so those intervals are too narrow.  This component scores the
candidate (and the latest blessed model, when there is one) on the test
split itself (components/predictions.py), and computes, with
components/intervals.py's seeded bootstrap over *lesions*:

* ``intervals.json``: every headline metric (balanced accuracy, accuracy,
  macro F1, macro AUC, ECE, melanoma recall, per-class recall and precision)
  overall and per group of each slice feature, as
  ``{"value": v, "lower": l, "upper": u}``.
* the **subgroup gate**: each group (sex, age band, site) with at least
  ``min_examples`` test images is compared with the rest of the test set
  on a metric that does not move with class mix alone: the mean recall over
  the classes with at least ``min_class_examples`` lesions both in the group
  and in the rest (or melanoma recall, when melanoma has that many).  A group fails only when the whole
  interval of (group - rest) lies below ``-max_gap``; the intervals are
  Bonferroni-widened to ``1 - (1 - confidence) / m`` over the m groups
  compared, so the gate's chance of refusing a fair model is at most
  ``1 - confidence``.  Groups too small to measure are listed with why.
* the **regression gate**: the paired difference of balanced accuracy
  (candidate - baseline) on the same test images and the same lesion draws;
  it fails only when the whole interval lies below
  ``-max_balanced_accuracy_drop``.  No baseline: passed, recorded as such.

Output: a standard ``ModelBlessing`` (custom property ``blessed`` 1 when both
gates pass; ``current_model`` / ``current_model_id``) holding
``gate_report.json``, ``intervals.json`` and ``predictions.npz`` (read
back by components/run_report/readers.py; the
candidate's test-split probabilities, labels, image and lesion ids and
slice features, ``slice/<feature>``: every number above can be recomputed
from it).  MobilePusher
pushes only when this blessing and the Evaluator's are both positive.
"""

import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import intervals
from components import predictions as predictions_lib
from models import features

GATE_REPORT_FILE = 'gate_report.json'
INTERVALS_FILE = 'intervals.json'
PREDICTIONS_FILE = 'predictions.npz'
SUBGROUP_GATE = 'subgroup'
REGRESSION_GATE = 'regression'
# Metrics the subgroup gate can compare (Settings.subgroup_gap_metric).
BALANCED_ACCURACY = 'balanced_accuracy'
MELANOMA_RECALL = 'melanoma_recall'
METRICS = (BALANCED_ACCURACY, MELANOMA_RECALL)
# A group of fewer lesions gets its values without an interval: a bootstrap
# over so few clusters says nothing about the spread.
MIN_LESIONS = 5
# The headline metrics of intervals.json the summary, report and model card
# show first, in this order, with their titles.
HEADLINE_METRICS = (
    (MELANOMA_RECALL, 'Melanoma recall (sensitivity)'),
    (BALANCED_ACCURACY, 'Balanced accuracy (mean per-class recall)'),
    ('accuracy', 'Accuracy'),
    ('macro_f1', 'Macro F1'),
    ('macro_auc', 'Macro AUC (one class vs the rest)'),
    ('expected_calibration_error',
     'Expected calibration error (top-1, 10 bins)'))


def _clean(value):
  """JSON-safe: NaN -> None, numpy scalars -> float."""
  value = float(value)
  return None if np.isnan(value) else value


def _interval_dict(interval: intervals.Interval) -> Dict[str, Optional[float]]:
  return {k: _clean(v) for k, v in interval.as_dict().items()}


def compute_intervals(labels: np.ndarray, probabilities: np.ndarray,
                      lesion_ids: Sequence[str],
                      slices: Dict[str, Sequence[str]],
                      class_names: Sequence[str], melanoma: Optional[str], *,
                      draws: int, seed: int, confidence: float,
                      calibration_bins: int) -> Dict[str, Any]:
  """intervals.json: headline metrics overall and per group of each slice."""
  metrics = intervals.headline_metrics(class_names, melanoma,
                                       calibration_bins)
  lesion_ids = np.asarray(lesion_ids)

  def scored(mask):
    out = intervals.bootstrap_many(
        metrics, labels[mask], probabilities[mask], lesion_ids[mask],
        draws=draws, seed=seed, confidence=confidence)
    lesions = int(len(np.unique(lesion_ids[mask])))
    values = {name: _interval_dict(i) for name, i in out.items()}
    if lesions < MIN_LESIONS:  # Too few clusters to resample: no interval.
      values = {name: dict(v, lower=None, upper=None)
                for name, v in values.items()}
    return {'examples': int(mask.sum()), 'lesions': lesions,
            'metrics': values}

  everything = np.ones(len(labels), bool)
  result = {
      'method': ('percentile bootstrap over lesions (every image of a drawn '
                 'lesion counts as often as the lesion was drawn); each '
                 'slice resampled within itself'),
      'draws': draws, 'seed': seed, 'confidence': confidence,
      'overall': scored(everything), 'slices': []}
  for feature, values in slices.items():
    values = np.asarray(values)
    for group in sorted(set(values.tolist())):
      entry = scored(values == group)
      result['slices'].append(dict(feature=feature, group=group, **entry))
  return result


def _group_metric(metric: str, classes: Sequence[int]) -> intervals.Metric:
  """Mean recall over ``classes`` (one class: that class's recall)."""
  recalls = [intervals.class_recall(c) for c in classes]
  def mean_recall(y_true, y_pred, weights):
    return np.mean(np.stack([r(y_true, y_pred, weights) for r in recalls],
                            axis=1), axis=1)
  mean_recall.__name__ = metric
  return mean_recall


def subgroup_gates(labels: np.ndarray, probabilities: np.ndarray,
                   lesion_ids: Sequence[str],
                   slices: Dict[str, Sequence[str]], families: Sequence[str],
                   class_names: Sequence[str], metric: str,
                   melanoma: Optional[str], *, max_gap: float,
                   min_examples: int, min_class_examples: int,
                   exclude_unknown: bool, draws: int, seed: int,
                   confidence: float) -> List[Dict[str, Any]]:
  """One gate entry per slice family (see the module docstring)."""
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  if metric == MELANOMA_RECALL and melanoma not in class_names:
    raise ValueError(f'{MELANOMA_RECALL} needs {melanoma!r} in the labels '
                     f'{list(class_names)}')
  predicted = np.asarray(probabilities).argmax(axis=1)
  lesion_ids = np.asarray(lesion_ids)
  # First which groups can be measured (m, the multiplicity, counts them).
  plans = []
  for family in families:
    values = np.asarray(slices[family])
    compared, excluded = {}, {}
    for group in sorted(set(values.tolist())):
      in_group = values == group
      n = int(in_group.sum())
      # Lesions, not images, per class: the bootstrap's unit.
      in_class = [len(np.unique(lesion_ids[in_group & (labels == c)]))
                  for c in range(len(class_names))]
      out_class = [len(np.unique(lesion_ids[~in_group & (labels == c)]))
                   for c in range(len(class_names))]
      if metric == MELANOMA_RECALL:
        candidates = [class_names.index(melanoma)]
      else:
        candidates = range(len(class_names))
      classes = [c for c in candidates if in_class[c] >= min_class_examples
                 and out_class[c] >= min_class_examples]
      entry = {'examples': n, 'lesions': int(len(np.unique(
          lesion_ids[in_group])))}
      if exclude_unknown and group == features.UNKNOWN:
        excluded[group] = dict(entry, reason='unknown is not a group')
      elif n < min_examples:
        excluded[group] = dict(entry, reason=f'fewer than {min_examples} '
                               'test images')
      elif n == len(labels):
        excluded[group] = dict(entry, reason='no rest to compare with')
      elif not classes:
        excluded[group] = dict(
            entry, reason=f'no class with >= {min_class_examples} lesions '
            'in the group and in the rest')
      else:
        compared[group] = (in_group, classes, entry)
    plans.append((family, compared, excluded))
  m = sum(len(compared) for _, compared, _ in plans)
  family_confidence = 1.0 - (1.0 - confidence) / max(m, 1)

  gates = []
  for family, compared, excluded in plans:
    groups = {}
    for group, (in_group, classes, entry) in compared.items():
      score = _group_metric(metric, classes)
      difference = intervals.bootstrap(
          lambda y, p, w, g=in_group, s=score: (
              intervals.on_subset(s, g)(y, p, w)
              - intervals.on_subset(s, ~g)(y, p, w)),
          labels, predicted, lesion_ids, draws=draws, seed=seed,
          confidence=family_confidence)
      ones = np.ones((1, len(labels)))
      group_value = intervals.on_subset(score, in_group)(
          labels, predicted, ones)[0]
      rest_value = intervals.on_subset(score, ~in_group)(
          labels, predicted, ones)[0]
      passed = not difference.upper < -max_gap
      groups[group] = dict(
          entry, value=_clean(group_value), rest=_clean(rest_value),
          difference=_interval_dict(difference),
          classes=[class_names[c] for c in classes], passed=passed)
    failed = sorted(g for g, e in groups.items() if not e['passed'])
    if not groups:
      note = 'not measurable: no group large enough to compare'
    elif failed:
      note = '; '.join(
          f'{g}: {groups[g]["value"]:.3f} vs rest {groups[g]["rest"]:.3f}, '
          f'difference {intervals.text(groups[g]["difference"])} '
          f'lies below -{max_gap:.3f}' for g in failed)
    else:
      worst = min(groups, key=lambda g: groups[g]['difference']['value'])
      note = (f'worst {worst}: difference '
              f'{intervals.text(groups[worst]["difference"])}, not '
              f'wholly below -{max_gap:.3f}')
    gates.append({
        'gate': SUBGROUP_GATE, 'slice_family': family,
        'metric': (f'{MELANOMA_RECALL}' if metric == MELANOMA_RECALL else
                   'mean recall over the classes with enough images'),
        'groups': groups, 'excluded': excluded, 'failed_groups': failed,
        'bound': max_gap, 'confidence': family_confidence,
        'passed': not failed, 'note': note})
  return gates


def regression_gate(labels: np.ndarray, candidate: np.ndarray,
                    baseline: Optional[np.ndarray],
                    lesion_ids: Sequence[str], *, max_drop: float, draws: int,
                    seed: int, confidence: float,
                    baseline_uri: str = '') -> Dict[str, Any]:
  """The paired balanced-accuracy difference candidate - baseline."""
  entry = {'gate': REGRESSION_GATE, 'metric': BALANCED_ACCURACY,
           'bound': max_drop, 'confidence': confidence,
           'baseline_model': baseline_uri or None}
  if baseline is None:
    return dict(entry, difference=None, passed=True,
                note='no blessed baseline model: nothing to regress from')
  difference = intervals.paired_difference(
      intervals.balanced_accuracy, labels, candidate, baseline, lesion_ids,
      draws=draws, seed=seed, confidence=confidence)
  passed = not difference.upper < -max_drop
  note = (f'candidate - baseline balanced accuracy {difference} '
          f'{"is not wholly" if passed else "lies wholly"} below '
          f'-{max_drop:.3f}')
  return dict(entry, difference=_interval_dict(difference), passed=passed,
              note=note)


def failures(report: Dict[str, Any]) -> List[str]:
  """One line per failed gate, naming the groups and the intervals."""
  return [f'{g["gate"]} gate' + (f' [{g["slice_family"]}]'
                                  if 'slice_family' in g else '')
          + f': {g["note"]}'
          for g in report.get('gates', []) if not g.get('passed')]


def _write_json(uri: str, name: str, value: Any) -> None:
  with tf.io.gfile.GFile(os.path.join(uri, name), 'w') as f:
    f.write(json.dumps(value, indent=2) + '\n')


def score_candidate(candidate: predictions_lib.Predictions, *, labels: str,
                    melanoma_label: str, slice_features: str,
                    slice_families: str, metric: str, max_gap: float,
                    min_examples: int, min_class_examples: int,
                    exclude_unknown: int, confidence: float, draws: int,
                    seed: int, calibration_bins: int
                    ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
  """(intervals.json, the subgroup gates) of a model's predictions on one
  split, from IntervalGate's own parameters (see its Args): what the
  component computes before the regression gate, for any split
  (benchmarks/gates_on_split.py scores the eval split with it)."""
  class_names = json.loads(labels)
  melanoma = melanoma_label or None
  common = dict(draws=draws, seed=seed, confidence=confidence)
  slices = {key: candidate.slices[key] for key in json.loads(slice_features)}
  result = compute_intervals(
      candidate.labels, candidate.probabilities, candidate.lesion_ids, slices,
      class_names, melanoma, calibration_bins=calibration_bins, **common)
  families = json.loads(slice_families)
  gates = subgroup_gates(
      candidate.labels, candidate.probabilities, candidate.lesion_ids,
      {key: candidate.slices[key] for key in families}, families,
      class_names, metric, melanoma, max_gap=max_gap,
      min_examples=min_examples, min_class_examples=min_class_examples,
      exclude_unknown=bool(exclude_unknown), **common)
  return result, gates


def _predict(model: types.Artifact, split_files: Sequence[str]
             ) -> predictions_lib.Predictions:
  loaded = tf.saved_model.load(path_utils.serving_model_path(model.uri))
  return predictions_lib.predict_split(loaded, split_files)


@component
def IntervalGate(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    split: Parameter[str],
    labels: Parameter[str],
    melanoma_label: Parameter[str],
    slice_features: Parameter[str],
    slice_families: Parameter[str],
    metric: Parameter[str],
    max_gap: Parameter[float],
    min_examples: Parameter[int],
    min_class_examples: Parameter[int],
    exclude_unknown: Parameter[int],
    max_balanced_accuracy_drop: Parameter[float],
    confidence: Parameter[float],
    draws: Parameter[int],
    seed: Parameter[int],
    calibration_bins: Parameter[int],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
) -> None:
  """Intervals on the test split; blesses when the subgroup and regression
  gates pass (see the module docstring).

  Args:
    examples: ExampleGen's output (the ``split`` is scored).
    model: the candidate (recorded as the blessing's current_model).
    blessing: ModelBlessing with gate_report.json, intervals.json and
      predictions.npz.
    split: the split to score (the test split).
    labels: JSON list of class names (the label ids' order).
    melanoma_label: the melanoma class's name ('' when none).
    slice_features: JSON list of features to give per-group intervals.
    slice_families: JSON list of features the subgroup gate compares.
    metric: balanced_accuracy | melanoma_recall (see METRICS).
    max_gap: a group fails when (group - rest) is surely below -max_gap.
    min_examples: groups with fewer test images are listed, not compared.
    min_class_examples: a class counts in a group's mean recall when it
      has this many lesions in the group and in the rest.
    exclude_unknown: 1: 'unknown' groups are not compared.
    max_balanced_accuracy_drop: the regression gate's bound.
    confidence: the intervals' level (the subgroup gate's family-wise one).
    draws: bootstrap draws.
    seed: the bootstrap's seed.
    calibration_bins: ECE bins.
    baseline_model: the latest blessed model (the regression baseline).
  """
  split_files = [os.path.join(
      artifact_utils.get_split_uri([examples], split), '*')]
  candidate = _predict(model, split_files)
  result, gates = score_candidate(
      candidate, labels=labels, melanoma_label=melanoma_label,
      slice_features=slice_features, slice_families=slice_families,
      metric=metric, max_gap=max_gap, min_examples=min_examples,
      min_class_examples=min_class_examples, exclude_unknown=exclude_unknown,
      confidence=confidence, draws=draws, seed=seed,
      calibration_bins=calibration_bins)
  result['split'] = split
  common = dict(draws=draws, seed=seed)
  baseline = None
  if baseline_model is not None:
    baseline = _predict(baseline_model, split_files)
    if baseline.image_ids != candidate.image_ids:
      raise ValueError('the baseline was scored on other examples than the '
                       'candidate')
  gates.append(regression_gate(
      candidate.labels, candidate.probabilities,
      None if baseline is None else baseline.probabilities,
      candidate.lesion_ids, max_drop=max_balanced_accuracy_drop,
      confidence=confidence,
      baseline_uri=baseline_model.uri if baseline_model is not None else '',
      **common))
  report = {'gates': gates, 'blessed': all(g['passed'] for g in gates),
            'split': split, 'examples': int(len(candidate.labels)),
            'lesions': int(len(set(candidate.lesion_ids)))}

  tf.io.gfile.makedirs(blessing.uri)
  _write_json(blessing.uri, GATE_REPORT_FILE, report)
  _write_json(blessing.uri, INTERVALS_FILE, result)
  buffer = io.BytesIO()  # np.savez seeks; GFile (gs://...) cannot.
  np.savez_compressed(buffer, labels=candidate.labels,
                      probabilities=candidate.probabilities,
                      lesion_ids=np.asarray(candidate.lesion_ids),
                      image_ids=np.asarray(candidate.image_ids),
                      **{f'slice/{key}': np.asarray(values)
                         for key, values in candidate.slices.items()})
  with tf.io.gfile.GFile(os.path.join(blessing.uri, PREDICTIONS_FILE),
                         'wb') as f:
    f.write(buffer.getvalue())
  blessing.set_int_custom_property('blessed', int(report['blessed']))
  blessing.set_string_custom_property('current_model', model.uri)
  blessing.set_int_custom_property('current_model_id', model.id)
  overall = result['overall']['metrics']
  logging.info('IntervalGate: balanced accuracy %s on %d test images',
               intervals.text(overall['balanced_accuracy']),
               report['examples'])
  for gate in gates:
    logging.info('IntervalGate %s %s: %s', gate['gate'],
                 'passed' if gate['passed'] else 'FAILED', gate['note'])
