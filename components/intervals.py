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
* ``balanced_accuracy`` / ``accuracy`` / ``class_recall``: weighted metrics
  of integer predictions, equal to scikit-learn's when every weight is 1.
"""

import dataclasses
from typing import Callable, Optional, Sequence

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
    return f'{self.value:.3f} [{self.lower:.3f}, {self.upper:.3f}]'


def class_recall(class_id: int) -> Metric:
  """Weighted recall of one class (NaN in a draw without that class)."""
  def metric(y_true, y_pred, weights):
    positive = y_true == class_id
    support = weights[:, positive].sum(axis=1)
    hits = weights[:, positive & (y_pred == class_id)].sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
      return np.where(support > 0, hits / np.where(support > 0, support, 1),
                      np.nan)
  return metric


def balanced_accuracy(y_true, y_pred, weights) -> np.ndarray:
  """Mean recall over the classes present in each draw."""
  recalls = np.stack([class_recall(c)(y_true, y_pred, weights)
                      for c in np.unique(y_true)], axis=1)
  return np.nanmean(recalls, axis=1)


def accuracy(y_true, y_pred, weights) -> np.ndarray:
  correct = (y_true == y_pred).astype(float)
  return (weights * correct).sum(axis=1) / weights.sum(axis=1)


def _cluster_ids(groups: Optional[Sequence], n: int) -> np.ndarray:
  """Dense cluster ids 0..C-1 (each example its own cluster if no groups)."""
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


def bootstrap(metric: Metric, y_true, y_pred, groups=None, *,
              draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
              confidence: float = DEFAULT_CONFIDENCE) -> Interval:
  """The metric on all examples and its percentile interval over lesions."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  ids = _cluster_ids(groups, len(y_true))
  value = float(metric(y_true, y_pred, np.ones((1, len(y_true))))[0])
  samples = np.concatenate([metric(y_true, y_pred, w)
                            for w in _draw_weights(ids, draws, seed)])
  return _interval(value, samples, confidence)


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
