"""Deriving the report's numbers: tables, curves, reliability, the blessing."""

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from components import intervals as intervals_lib
from components import interval_gate
from models import calibration
from models import features
from components.run_report.readers import Evaluation, Predictions

# The melanoma class of the HAM10000 labels; the pipeline passes the run's
# (Settings.melanoma_class, '' when the label list has none).
DEFAULT_MELANOMA = 'mel'


def _melanoma(labels: Sequence[str], melanoma: str = DEFAULT_MELANOMA
              ) -> Optional[str]:
  """The class reports put first and call melanoma (None: none)."""
  return melanoma if melanoma and melanoma in labels else None


RELIABILITY_BINS = 10


def fmt(value) -> str:
  """Numbers for tables: integers as such, others with 4 decimals."""
  if value is None:
    return '—'
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  if math.isnan(number):
    return '—'
  return f'{number:.4f}'


def pick_gradcam_examples(labels: np.ndarray, probabilities: np.ndarray,
                          num_classes: int, per_cell: int
                          ) -> Dict[int, Dict[str, List[int]]]:
  """class -> {'correct': [indices], 'wrong': [indices]}, most confident first.

  'wrong' are that class's examples predicted as another class.
  """
  predicted = probabilities.argmax(1)
  confidence = probabilities.max(1)
  out = {}
  for c in range(num_classes):
    mine = np.flatnonzero(labels == c)
    order = mine[np.argsort(-confidence[mine], kind='stable')]
    out[c] = {'correct': [int(i) for i in order if predicted[i] == c
                          ][:per_cell],
              'wrong': [int(i) for i in order if predicted[i] != c
                        ][:per_cell]}
  return out


def confusion_from_tfma(plot, num_classes: int) -> Optional[np.ndarray]:
  """The matrix of a multi_class_confusion_matrix_at_thresholds plot."""
  if plot is None or not plot.matrices:
    return None
  matrix = np.zeros((num_classes, num_classes))
  for entry in plot.matrices[0].entries:
    if (0 <= entry.actual_class_id < num_classes
        and 0 <= entry.predicted_class_id < num_classes):
      matrix[entry.actual_class_id, entry.predicted_class_id] += (
          entry.num_weighted_examples)
  return matrix


def roc_from_tfma(class_plots, labels) -> Dict[str, Tuple]:
  """Per-class ROC from TFMA's per-class confusion_matrix_at_thresholds."""
  curves = {}
  for c, name in enumerate(labels):
    plot = class_plots.get(('confusion_matrix_at_thresholds', c))
    if plot is None or not plot.matrices:
      continue
    fpr, tpr = [], []
    for m in plot.matrices:
      negatives = m.false_positives + m.true_negatives
      positives = m.true_positives + m.false_negatives
      fpr.append(m.false_positives / negatives if negatives else 0.0)
      tpr.append(m.true_positives / positives if positives else 0.0)
    order = np.argsort(fpr, kind='stable')
    fpr = np.array(fpr)[order]
    tpr = np.array(tpr)[order]
    curves[name] = (fpr, tpr, float(np.trapz(tpr, fpr)) if len(fpr) > 1
                    else None)
  return curves


def roc_from_predictions(predictions: Predictions, labels
                         ) -> Dict[str, Tuple]:
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  curves = {}
  for c, name in enumerate(labels):
    truth = predictions.labels == c
    if truth.all() or not truth.any():
      continue  # One-vs-rest needs both kinds of example.
    fpr, tpr, _ = sk_metrics.roc_curve(truth, predictions.probabilities[:, c])
    curves[name] = (fpr, tpr, float(sk_metrics.auc(fpr, tpr)))
  return curves


def reliability_from_predictions(predictions: Predictions,
                                 bins: int = RELIABILITY_BINS):
  """Top-1 confidence vs accuracy per bin (NaN where a bin is empty), the
  counts, and the expected calibration error: models/calibration.py's
  reliability, the binning of the Trainer's fit and of the Evaluator's
  metric (components/tfma_metrics.py)."""
  probabilities = predictions.probabilities
  ece, counts, mean_conf, accuracy = calibration.reliability(
      probabilities.max(1), probabilities.argmax(1) == predictions.labels,
      np.ones(len(probabilities)), bins)
  return mean_conf, accuracy, counts, ece


def reliability_from_tfma(plot):
  """(mean prediction, observed frequency, counts) of a calibration plot."""
  if plot is None or not plot.buckets:
    return None
  buckets = [b for b in plot.buckets if b.num_weighted_examples.value > 0]
  if not buckets:
    return None
  counts = np.array([b.num_weighted_examples.value for b in buckets])
  prediction = np.array([b.total_weighted_refined_prediction.value
                         for b in buckets]) / counts
  observed = np.array([b.total_weighted_label.value for b in buckets]) / counts
  bins = RELIABILITY_BINS
  which = np.clip((prediction * bins).astype(int), 0, bins - 1)
  out_counts = np.bincount(which, counts, bins)
  out_pred = np.bincount(which, prediction * counts, bins) / np.maximum(
      out_counts, 1e-12)
  out_obs = np.bincount(which, observed * counts, bins) / np.maximum(
      out_counts, 1e-12)
  return out_pred, out_obs, out_counts


def _family(columns: Sequence[str]) -> frozenset:
  return frozenset(columns)


def _family_of_gate(name: str) -> frozenset:
  tokens = [t for t in re.split(r'[^A-Za-z0-9_]+', name or '') if t]
  return frozenset(t for t in tokens if t.lower() not in ('x', 'by', 'and'))


def slice_tables(evaluation: Evaluation, labels: Sequence[str],
                 gates: Sequence[Dict[str, Any]],
                 intervals: Optional[Dict[str, Any]] = None,
                 melanoma: str = DEFAULT_MELANOMA) -> List[Dict[str, Any]]:
  """One table per slice family: groups, counts, metrics, spread, gate marks.

  Columns: every scalar metric the slices have, plus each class's recall
  when per-class recall is present (melanoma first), plus the group's
  balanced accuracy with its 95% interval (``intervals``: intervals.json)
  for single-feature families.  The spread of a metric is max - min over
  the family's groups (descriptive; no gate uses it).  A gate that failed
  on a family marks the groups it names.
  """
  by_group = {(e['feature'], e['group']): e['metrics']
              for e in (intervals or {}).get('slices', [])}
  melanoma = _melanoma(labels, melanoma)
  mel = labels.index(melanoma) if melanoma else None
  families: Dict[Tuple[str, ...], List[Tuple]] = {}
  for key in evaluation.metrics:
    if key == ():
      continue
    families.setdefault(tuple(c for c, _ in key), []).append(key)
  tables = []
  for columns, keys in sorted(families.items()):
    metric_names = sorted({m for k in keys for m in evaluation.metrics[k]
                           if '(change' not in m})
    if 'example_count' in metric_names:
      metric_names.remove('example_count')
      metric_names.insert(0, 'example_count')
    recall_name = None
    if mel is not None:
      for k in keys:
        for name in evaluation.per_class.get(k, {}).get(mel, {}):
          if 'recall' in name and '(change' not in name:
            recall_name = name
            break
    columns_shown = list(metric_names)
    if recall_name:
      columns_shown.append(f'{melanoma} {recall_name}')
    rows = []
    for k in sorted(keys, key=lambda k: tuple(v for _, v in k)):
      group = ' x '.join(_group_name(c, v, labels) for c, v in k)
      values = [_count_or_value(m, evaluation.metrics[k].get(m))
                for m in metric_names]
      if recall_name:
        values.append(evaluation.per_class.get(k, {}).get(mel, {}).get(
            recall_name))
      found = by_group.get(k[0]) if len(k) == 1 else None
      rows.append({'group': group, 'values': values, 'raw': k,
                   'failed': False,
                   'interval': (intervals_lib.text(found['balanced_accuracy'])
                                if found else None)})
    gaps = []
    for i, name in enumerate(columns_shown):
      present = [r['values'][i] for r in rows if r['values'][i] is not None]
      gaps.append(max(present) - min(present)
                  if len(present) > 1 and name != 'example_count' else None)
    family_gates = [g for g in gates if _family_of_gate(
        g.get('slice_family', '')) == _family(columns)]
    for row in rows:
      named = {str(n) for g in family_gates for n in g.get('failed_groups')
               or []}
      if row['group'] in named or any(v in named for _, v in row['raw']):
        row['failed'] = True
    for failure in evaluation.failures:
      for row in rows:
        if failure['slice'] == row['raw']:
          row['failed'] = True
    tables.append({
        'family': ' x '.join(columns),
        'columns': columns_shown,
        'failed_columns': [False] * len(columns_shown),
        'has_intervals': any(r['interval'] for r in rows),
        'rows': rows, 'gaps': gaps, 'gates': family_gates,
        'failed': any(not g.get('passed', True) for g in family_gates)
                  or any(r['failed'] for r in rows)})
  return tables


def _count_or_value(name: str, value):
  if name == 'example_count' and value is not None:
    return int(value)
  return value


def _group_name(column: str, value: str, labels: Sequence[str]) -> str:
  if column == features.LABEL_KEY:
    try:
      return labels[int(value)]
    except (ValueError, IndexError):
      return value
  return value


def per_class_table(evaluation: Evaluation, labels: Sequence[str],
                    predictions: Optional[Predictions],
                    melanoma: str = DEFAULT_MELANOMA):
  """(columns, rows) of the overall slice's per-class metrics, plus support."""
  overall = evaluation.per_class.get((), {})
  names = sorted({n for c in overall.values() for n in c
                  if '(change' not in n})
  columns = ['examples'] + names
  rows = []
  order = list(range(len(labels)))
  melanoma = _melanoma(labels, melanoma)
  if melanoma:  # Melanoma first.
    order.remove(labels.index(melanoma))
    order.insert(0, labels.index(melanoma))
  for c in order:
    support = (int((predictions.labels == c).sum()) if predictions is not None
               else None)
    label_slice = evaluation.metrics.get(((features.LABEL_KEY, str(c)),), {})
    if label_slice.get('example_count') is not None:
      support = int(label_slice['example_count'])
    rows.append({'label': labels[c],
                 'values': [support] + [overall.get(c, {}).get(n)
                                        for n in names]})
  return columns, rows


def interval_rows(intervals: Optional[Dict[str, Any]], labels: Sequence[str],
                  melanoma: str = DEFAULT_MELANOMA):
  """(headline rows, per-class rows) of intervals.json, formatted
  ``0.612 [0.571, 0.650]``; melanoma first among the classes."""
  if not intervals:
    return [], []
  metrics = intervals['overall']['metrics']
  headline = [(title, intervals_lib.text(metrics[key]))
              for key, title in interval_gate.HEADLINE_METRICS
              if key in metrics]
  order = list(labels)
  melanoma = _melanoma(labels, melanoma)
  if melanoma:
    order.remove(melanoma)
    order.insert(0, melanoma)
  per_class = [(name, intervals_lib.text(metrics.get(f'recall/{name}')),
                intervals_lib.text(metrics.get(f'precision/{name}')))
               for name in order]
  return headline, per_class


def calibration_limitation(fit: Optional[Dict[str, Any]]) -> str:
  """The model card's sentence on what the probabilities are."""
  prior = (fit or {}).get('prior_correction') or {}
  corrected = (' They also carry a prior correction (per-class offsets '
               'fitted on the eval split for balanced accuracy): they are '
               'calibrated to equal class prevalence, not to this archive\'s '
               'case mix, and common classes get lower probabilities than '
               'their frequency.' if prior.get('applied') else '')
  if fit and fit.get('method') == 'temperature' and fit.get('applied'):
    return (f'Probabilities are temperature scaled (T = '
            f'{fit["temperature"]:.3f}, fitted on the eval split: ECE '
            f'{fit["ece_before"]:.3f} -> {fit["ece_after"]:.3f} there; the '
            'test-split ECE is above). Calibrated on this archive\'s case '
            'mix only: they are not risks for another population or '
            'clinic.' + corrected)
  tried = (f' (temperature scaling was tried on the eval split and '
           f'{fit["reason"]})' if fit and fit.get('reason') else '')
  return ('Probabilities are the network\'s softmax' + tried + '; see the '
          'test-split ECE and reliability plot. They are not risks; do not '
          'threshold them as such.' + corrected)


def _overall_value(evaluation: Evaluation, key: str) -> Optional[float]:
  """The overall slice's value; for a per-class metric (e.g. the melanoma
  recall, a ClassRecall whose class is in its config) the one class that
  has it."""
  if key in evaluation.overall:
    return evaluation.overall[key]
  found = [metrics[key] for metrics in evaluation.per_class.get((), {})
           .values() if key in metrics]
  return found[0] if len(found) == 1 else None


def blessing_summary(blessed: Optional[bool], evaluation: Evaluation,
                     gap: Optional[Dict[str, Any]], labels: Sequence[str]
                     ) -> Dict[str, Any]:
  """The decision, each configured threshold with its value, the failures.

  ``blessed`` is the Evaluator's blessing.  A threshold's value is the
  overall slice's (a per-class metric's: its one class's); its verdict
  comes from TFMA's validation failures, which are listed with their class
  and slice.  The run report and the pushed version's manifest
  (components/mobile_pusher.py) both show this.
  """
  failed = {f['metric'] for f in evaluation.failures}
  gates = []
  for t in evaluation.thresholds:
    metric = t['metric']
    snake = re.sub(r'(?<!^)(?=[A-Z])', '_', metric).lower()
    known = set(evaluation.overall) | {
        m for metrics in evaluation.per_class.get((), {}).values()
        for m in metrics}
    key = next((k for k in sorted(known)
                if k in (metric, snake) or k.lower() == metric.lower()),
               snake)
    if t['kind'] == 'change':
      key = f'{key} (change vs baseline)'
    gates.append({'metric': key, 'slices': t['slices'],
                  'threshold': t['threshold'],
                  'value': _overall_value(evaluation, key),
                  'passed': key not in failed and metric not in failed})
  failures = []
  for f in evaluation.failures:
    of_class = ''
    if f['class_id'] is not None:
      of_class = (f' of {labels[f["class_id"]]}'
                  if 0 <= f['class_id'] < len(labels)
                  else f' of class {f["class_id"]}')
    failures.append(f'{f["metric"]}{of_class} on {_slice_text(f["slice"])} '
                    f'= {fmt(f["value"])}, threshold {f["threshold"]}')
  final = bool(blessed) and (gap is None or bool(gap.get('blessed')))
  has_baseline = any('(change vs baseline)' in k for k in evaluation.overall)
  reasons = []
  if not blessed:
    reasons.append('the Evaluator did not bless the model'
                   + (f' ({len(failures)} threshold(s) failed)'
                      if failures else ''))
  if gap is not None and not gap.get('blessed'):
    reasons += interval_gate.failures(gap) or ['the interval gate did not '
                                               'bless the model']
  summary = ('All gates passed' if final else 'Not blessed: ' +
             '; '.join(reasons) if reasons else 'Not blessed')
  summary += ('; compared with the latest blessed model.' if has_baseline
              else '; no earlier blessed model to compare with.')
  return {'blessed': final, 'evaluator_blessed': blessed, 'gates': gates,
          'failures': failures, 'gap': gap, 'summary': summary,
          'has_baseline': has_baseline}


def _slice_text(key) -> str:
  return ' x '.join(f'{c}={v}' for c, v in key) or 'overall'
