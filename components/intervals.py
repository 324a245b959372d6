"""95% intervals for evaluation metrics by a bootstrap over lesions.

Several HAM10000 images can show one lesion; they are not independent, so a
bootstrap that resamples images understates the spread of a metric.  Here
each bootstrap draw resamples *lesions* (clusters) with replacement and
weights every image by how often its lesion was drawn; metrics take those
weights.  Draws are seeded, so an interval is reproducible.

Pure numpy (no TensorFlow, no Beam): the gates, the report and ``predict``
can all use it.

* ``bootstrap(metric, y_true, y_pred, groups)``: the metric's value and its
  percentile interval.
* ``paired_difference(metric, y_true, pred_a, pred_b, groups)``: the interval
  of ``metric(a) - metric(b)`` on the same resampled images (regression and
  parity comparisons: both models see the same draw).
* ``bootstrap_many(metrics, y_true, y_pred, groups)``: several metrics on the
  same draws (one resampling for a whole report).
* ``balanced_accuracy`` / ``accuracy`` / ``class_recall`` /
  ``class_precision`` / ``macro_f1``: weighted top-1 metrics; ``y_pred`` is
  either class ids [N] or probabilities [N, C] (top-1 taken).
  ``macro_auc`` and ``expected_calibration_error`` need probabilities.  With
  every weight 1 they equal scikit-learn's (and the TFMA metrics of
  components/tfma_metrics.py).
* ``headline_metrics(class_names)``: the report's metrics by name.
"""

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

DEFAULT_DRAWS = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95

# metric(y_true [N], y_pred [N], weights [D, N]) -> values [D]
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Interval:
  value: float
  lower: float
  upper: float

  def as_dict(self) -> dict:
    return {'value': self.value, 'lower': self.lower, 'upper': self.upper}

  def __str__(self) -> str:
    return text(self)


def text(interval) -> str:
  """``0.612 [0.571, 0.650]`` of an Interval or its ``as_dict()`` (JSON
  null for NaN allowed); ``n/a`` when there is no value."""
  if interval is None:
    return 'n/a'
  if isinstance(interval, Interval):
    interval = interval.as_dict()
  value, lower, upper = (interval.get(k) for k in ('value', 'lower', 'upper'))
  if value is None or not np.isfinite(value):
    return 'n/a'
  if lower is None or upper is None or not (np.isfinite(lower)
                                            and np.isfinite(upper)):
    return f'{value:.3f} [n/a]'
  return f'{value:.3f} [{lower:.3f}, {upper:.3f}]'


def top1(y_pred) -> np.ndarray:
  """Class ids: y_pred itself, or the argmax of probabilities [N, C]."""
  y_pred = np.asarray(y_pred)
  return y_pred.argmax(axis=1) if y_pred.ndim == 2 else y_pred


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, NaN where the denominator is 0."""
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denominator > 0,
                    numerator / np.where(denominator > 0, denominator, 1),
                    np.nan)


def class_recall(class_id: int) -> Metric:
  """Weighted recall of one class (NaN in a draw without that class)."""
  def metric(y_true, y_pred, weights):
    y_pred = top1(y_pred)
    positive = y_true == class_id
    support = weights[:, positive].sum(axis=1)
    hits = weights[:, positive & (y_pred == class_id)].sum(axis=1)
    return _ratio(hits, support)
  return metric


def class_precision(class_id: int) -> Metric:
  """Weighted top-1 precision of one class: 0 when the class has examples
  but is never predicted (scikit-learn's zero_division default), NaN when it
  has neither."""
  def metric(y_true, y_pred, weights):
    y_pred = top1(y_pred)
    predicted = weights[:, y_pred == class_id].sum(axis=1)
    support = weights[:, y_true == class_id].sum(axis=1)
    hits = weights[:, (y_true == class_id) & (y_pred == class_id)].sum(axis=1)
    return np.where(predicted > 0, _ratio(hits, predicted),
                    np.where(support > 0, 0.0, np.nan))
  return metric


def _mean_over_classes(values: np.ndarray) -> np.ndarray:
  """nanmean over axis 1 without a warning for an all-NaN row."""
  defined = np.isfinite(values)
  return _ratio(np.where(defined, values, 0.0).sum(axis=1),
                defined.sum(axis=1).astype(float))


def balanced_accuracy(y_true, y_pred, weights) -> np.ndarray:
  """Mean recall over the classes present in each draw."""
  y_pred = top1(y_pred)
  recalls = np.stack([class_recall(c)(y_true, y_pred, weights)
                      for c in np.unique(y_true)], axis=1)
  return _mean_over_classes(recalls)


def accuracy(y_true, y_pred, weights) -> np.ndarray:
  correct = (y_true == top1(y_pred)).astype(float)
  return (weights * correct).sum(axis=1) / weights.sum(axis=1)


def macro_f1(y_true, y_pred, weights) -> np.ndarray:
  """Mean F1 over the classes that occur as a label or a prediction."""
  y_pred = top1(y_pred)
  scores = []
  for c in np.union1d(np.unique(y_true), np.unique(y_pred)):
    true_c, pred_c = y_true == c, y_pred == c
    tp = weights[:, true_c & pred_c].sum(axis=1)
    fp = weights[:, ~true_c & pred_c].sum(axis=1)
    fn = weights[:, true_c & ~pred_c].sum(axis=1)
    # A class absent from a draw (no label, no prediction) is left out.
    scores.append(np.where(tp + fp + fn > 0, _ratio(2 * tp, 2 * tp + fp + fn),
                           np.nan))
  return _mean_over_classes(np.stack(scores, axis=1))


def class_auc(class_id: int) -> Metric:
  """Weighted one-vs-rest ROC AUC of one class's probability (ties count
  half); NaN in a draw without positives or negatives."""
  def metric(y_true, y_pred, weights):
    scores = np.asarray(y_pred)[:, class_id]
    order = np.argsort(scores, kind='stable')
    scores, positive = scores[order], (y_true == class_id)[order]
    w = weights[:, order]
    negative_w = np.where(positive, 0.0, w)
    below = np.concatenate([np.zeros((len(w), 1)),
                            np.cumsum(negative_w, axis=1)], axis=1)
    start = np.searchsorted(scores, scores, side='left')
    end = np.searchsorted(scores, scores, side='right')
    # Per example: weight of negatives scored lower, and of tied negatives.
    lower, tied = below[:, start], below[:, end] - below[:, start]
    positive_w = np.where(positive, w, 0.0)
    wins = (positive_w * (lower + 0.5 * tied)).sum(axis=1)
    return _ratio(wins, positive_w.sum(axis=1) * negative_w.sum(axis=1))
  return metric


def macro_auc(y_true, y_pred, weights) -> np.ndarray:
  """Mean one-vs-rest AUC over the classes with an example (the labels')."""
  return _mean_over_classes(np.stack(
      [class_auc(c)(y_true, y_pred, weights) for c in np.unique(y_true)],
      axis=1))


def expected_calibration_error(bins: int = 10) -> Metric:
  """Weighted top-1 ECE over equal-width confidence bins (the binning of
  components/tfma_metrics.ExpectedCalibrationError)."""
  def metric(y_true, y_pred, weights):
    y_pred = np.asarray(y_pred)
    confidence = y_pred.max(axis=1)
    gap = (y_pred.argmax(axis=1) == y_true).astype(float) - confidence
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    members = np.eye(bins)[index]                        # [N, bins]
    per_bin = (weights * gap) @ members                  # [D, bins]
    return np.abs(per_bin).sum(axis=1) / weights.sum(axis=1)
  return metric


def headline_metrics(class_names: Sequence[str], melanoma: Optional[str],
                     calibration_bins: int = 10) -> Dict[str, Metric]:
  """name -> metric of the report's headline numbers (probabilities in).

  Names match the TFMA metrics': balanced_accuracy, accuracy, macro_f1,
  macro_auc, expected_calibration_error, melanoma_recall (when the label
  list has ``melanoma``), and recall/<class>, precision/<class>.
  """
  out: Dict[str, Metric] = {
      'balanced_accuracy': balanced_accuracy, 'accuracy': accuracy,
      'macro_f1': macro_f1, 'macro_auc': macro_auc,
      'expected_calibration_error': expected_calibration_error(
          calibration_bins)}
  if melanoma in class_names:
    out['melanoma_recall'] = class_recall(list(class_names).index(melanoma))
  for c, name in enumerate(class_names):
    out[f'recall/{name}'] = class_recall(c)
    out[f'precision/{name}'] = class_precision(c)
  return out


def _cluster_ids(groups: Optional[Sequence], n: int) -> np.ndarray:
  """Dense cluster ids 0..C-1 (each example its own cluster if no groups)."""
  if n == 0:
    raise ValueError('no examples to bootstrap')
  if groups is None:
    return np.arange(n)
  groups = np.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(f'groups has shape {groups.shape}, expected ({n},)')
  _, ids = np.unique(groups, return_inverse=True)
  return ids


def _draw_weights(cluster_ids: np.ndarray, draws: int, seed: int,
                  chunk: int = 200):
  """Yields [d, N] example weights: each cluster weighted by its draw count."""
  n_clusters = int(cluster_ids.max()) + 1
  rng = np.random.default_rng(seed)
  done = 0
  while done < draws:
    d = min(chunk, draws - done)
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters),
                             size=d)
    yield counts[:, cluster_ids].astype(float)
    done += d


def _interval(value: float, samples: np.ndarray,
              confidence: float) -> Interval:
  samples = samples[np.isfinite(samples)]
  if not np.isfinite(value) or samples.size == 0:
    return Interval(float(value), float('nan'), float('nan'))
  tail = (1.0 - confidence) / 2.0 * 100.0
  lower, upper = np.percentile(samples, [tail, 100.0 - tail])
  return Interval(float(value), float(lower), float(upper))


def bootstrap_many(metrics: Mapping[str, Metric], y_true, y_pred, groups=None,
                   *, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
                   confidence: float = DEFAULT_CONFIDENCE
                   ) -> Dict[str, Interval]:
  """Every metric's value and interval, all on the same lesion draws."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  ids = _cluster_ids(groups, len(y_true))
  ones = np.ones((1, len(y_true)))
  samples = {name: [] for name in metrics}
  for w in _draw_weights(ids, draws, seed):
    for name, metric in metrics.items():
      samples[name].append(metric(y_true, y_pred, w))
  return {name: _interval(float(metric(y_true, y_pred, ones)[0]),
                          np.concatenate(samples[name]), confidence)
          for name, metric in metrics.items()}


def bootstrap(metric: Metric, y_true, y_pred, groups=None, *,
              draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
              confidence: float = DEFAULT_CONFIDENCE) -> Interval:
  """The metric on all examples and its percentile interval over lesions."""
  return bootstrap_many({'metric': metric}, y_true, y_pred, groups,
                        draws=draws, seed=seed,
                        confidence=confidence)['metric']


def on_subset(metric: Metric, mask) -> Metric:
  """The metric on the examples where mask is true (the weights of the
  others are ignored): a group's value inside a whole-test-set draw."""
  mask = np.asarray(mask, bool)
  def subset(y_true, y_pred, weights):
    return metric(np.asarray(y_true)[mask], np.asarray(y_pred)[mask],
                  weights[:, mask])
  return subset


def paired_difference(metric: Metric, y_true, pred_a, pred_b, groups=None, *,
                      draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
                      confidence: float = DEFAULT_CONFIDENCE) -> Interval:
  """metric(pred_a) - metric(pred_b) with its interval, both on each draw."""
  y_true = np.asarray(y_true)
  pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
  ids = _cluster_ids(groups, len(y_true))
  ones = np.ones((1, len(y_true)))
  value = float(metric(y_true, pred_a, ones)[0] - metric(y_true, pred_b, ones)[0])
  samples = np.concatenate([metric(y_true, pred_a, w) - metric(y_true, pred_b, w)
                            for w in _draw_weights(ids, draws, seed)])
  return _interval(value, samples, confidence)
