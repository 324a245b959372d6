"""TFMA custom metrics for the Evaluator (built-in ones lack these).

Referenced from the EvalConfig by ``module='components.tfma_metrics'``; TFMA
imports this module in the Evaluator's workers.

TFMA 0.47's binarized Precision / Recall / F1Score threshold each class's
probability one-vs-rest (or, with ``top_k``, cannot be macro-averaged), so
the top-1 ("arg max") classification metrics that balanced accuracy and the
ISIC challenge use are defined here, from one confusion matrix per slice:
their values equal scikit-learn's on the arg max predictions
(tests/components/test_tfma_metrics.py).  Per-class metrics take their class
ids from the MetricsSpec's ``binarize.class_ids`` (one ``classId:N`` sub key
each; TFMA thresholds name them the same way) or from ``class_ids`` in the
metric's config.

* BalancedAccuracy: mean per-class recall over the classes present.
* ClassRecall / ClassPrecision / ClassF1: per class id.
* MacroF1: mean F1 over the classes in the labels or the predictions
  (scikit-learn's ``f1_score(average='macro')``).
* NormalizedConfusionMatrix: rows true class, columns predicted class, each
  row divided by the class's example count (an all-zero row: class absent).
* ExpectedCalibrationError: top-1 confidence vs accuracy in equal-width
  bins; besides ``expected_calibration_error`` it outputs the reliability
  diagram's data: ``reliability_count``, ``reliability_confidence`` (mean
  top-1 probability) and ``reliability_accuracy`` per bin (arrays; an empty
  bin has count 0 and NaN means).
"""

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util

from models import calibration

BALANCED_ACCURACY_NAME = 'balanced_accuracy'
CLASS_RECALL_NAME = 'class_recall'
CLASS_PRECISION_NAME = 'class_precision'
CLASS_F1_NAME = 'class_f1'
MACRO_F1_NAME = 'macro_f1'
NORMALIZED_CONFUSION_MATRIX_NAME = 'normalized_confusion_matrix'
ECE_NAME = 'expected_calibration_error'
RELIABILITY_COUNT_NAME = 'reliability_count'
RELIABILITY_CONFIDENCE_NAME = 'reliability_confidence'
RELIABILITY_ACCURACY_NAME = 'reliability_accuracy'

# A confusion matrix as {(true class, predicted class): weight}.
Confusion = Dict[Tuple[int, int], float]


def _per_class(confusion: Confusion):
  """(support, predicted, correct) dicts: class -> weight."""
  support: Dict[int, float] = {}
  predicted: Dict[int, float] = {}
  correct: Dict[int, float] = {}
  for (t, p), w in confusion.items():
    support[t] = support.get(t, 0.0) + w
    predicted[p] = predicted.get(p, 0.0) + w
    if t == p:
      correct[t] = correct.get(t, 0.0) + w
  return support, predicted, correct


def class_recall(confusion: Confusion, cls: int) -> float:
  support, _, correct = _per_class(confusion)
  if support.get(cls, 0.0) <= 0:
    return float('nan')  # No example of the class: recall is undefined.
  return correct.get(cls, 0.0) / support[cls]


def class_precision(confusion: Confusion, cls: int) -> float:
  support, predicted, correct = _per_class(confusion)
  if predicted.get(cls, 0.0) <= 0:
    # Never predicted: 0 if the class has examples (scikit-learn's
    # zero_division default), undefined if it has none either.
    return 0.0 if support.get(cls, 0.0) > 0 else float('nan')
  return correct.get(cls, 0.0) / predicted[cls]


def class_f1(confusion: Confusion, cls: int) -> float:
  support, predicted, _ = _per_class(confusion)
  if support.get(cls, 0.0) <= 0 and predicted.get(cls, 0.0) <= 0:
    return float('nan')
  precision = class_precision(confusion, cls)
  recall = class_recall(confusion, cls)
  recall = 0.0 if np.isnan(recall) else recall
  if precision + recall <= 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def balanced_accuracy(confusion: Confusion) -> float:
  support, _, _ = _per_class(confusion)
  recalls = [class_recall(confusion, c) for c in support if support[c] > 0]
  return float(np.mean(recalls)) if recalls else float('nan')


def macro_f1(confusion: Confusion) -> float:
  support, predicted, _ = _per_class(confusion)
  classes = sorted(set(support) | set(predicted))
  return (float(np.mean([class_f1(confusion, c) for c in classes]))
          if classes else float('nan'))


def normalized_confusion_matrix(confusion: Confusion,
                                n_classes: int) -> np.ndarray:
  matrix = np.zeros((n_classes, n_classes))
  for (t, p), w in confusion.items():
    if t < n_classes and p < n_classes:
      matrix[t, p] += w
  rows = matrix.sum(axis=1, keepdims=True)
  return np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)


# name -> (per class id?, value of a confusion matrix [and class id])
_CONFUSION_METRICS: Dict[str, Tuple[bool, Callable]] = {
    'BalancedAccuracy': (False, balanced_accuracy),
    'MacroF1': (False, macro_f1),
    'ClassRecall': (True, class_recall),
    'ClassPrecision': (True, class_precision),
    'ClassF1': (True, class_f1),
}


class _ConfusionMetric(tfma.metrics.Metric):
  """Base: a metric computed from the slice's top-1 confusion matrix."""

  KIND = ''

  def __init__(self, name: str, class_ids: Optional[List[int]] = None):
    super().__init__(_confusion_computations, name=name, kind=self.KIND,
                     class_ids=(list(class_ids) if class_ids is not None
                                else None))


class BalancedAccuracy(_ConfusionMetric):
  """Mean over classes of top-1 recall: the ISIC challenge's headline metric.

  A class's recall is the fraction of its examples whose highest-probability
  class is that class.  Classes absent from the slice's labels are left out
  of the mean (so a slice of one class reports that class's recall).
  """
  KIND = 'BalancedAccuracy'

  def __init__(self, name: str = BALANCED_ACCURACY_NAME):
    super().__init__(name)


class MacroF1(_ConfusionMetric):
  """Unweighted mean of the per-class top-1 F1 scores."""
  KIND = 'MacroF1'

  def __init__(self, name: str = MACRO_F1_NAME):
    super().__init__(name)


class ClassRecall(_ConfusionMetric):
  """Top-1 recall of each class id, one sub key (classId:N) per class.

  TFMA's binarized Recall thresholds each class's probability one-vs-rest;
  this counts an example as found only when its class is the arg max, the
  definition balanced accuracy averages.
  """
  KIND = 'ClassRecall'

  def __init__(self, class_ids: Optional[List[int]] = None,
               name: str = CLASS_RECALL_NAME):
    super().__init__(name, class_ids)


class ClassPrecision(_ConfusionMetric):
  """Top-1 precision of each class id (classId:N sub keys)."""
  KIND = 'ClassPrecision'

  def __init__(self, class_ids: Optional[List[int]] = None,
               name: str = CLASS_PRECISION_NAME):
    super().__init__(name, class_ids)


class ClassF1(_ConfusionMetric):
  """Top-1 F1 score of each class id (classId:N sub keys)."""
  KIND = 'ClassF1'

  def __init__(self, class_ids: Optional[List[int]] = None,
               name: str = CLASS_F1_NAME):
    super().__init__(name, class_ids)


class NormalizedConfusionMatrix(tfma.metrics.Metric):
  """Row-normalized top-1 confusion matrix, an [n_classes, n_classes] array."""

  def __init__(self, n_classes: int,
               name: str = NORMALIZED_CONFUSION_MATRIX_NAME):
    super().__init__(_confusion_computations, name=name, kind='Matrix',
                     class_ids=None, n_classes=int(n_classes))


class ExpectedCalibrationError(tfma.metrics.Metric):
  """Top-1 expected calibration error and its reliability diagram's data.

  ECE = sum over bins of (bin weight / total) * |accuracy - mean confidence|,
  the bins being ``bins`` equal-width intervals of the top-1 probability.
  """

  def __init__(self, bins: int = 10, name: str = ECE_NAME):
    super().__init__(_calibration_computations, name=name, bins=int(bins))


for _metric in (BalancedAccuracy, MacroF1, ClassRecall, ClassPrecision,
                ClassF1, NormalizedConfusionMatrix, ExpectedCalibrationError):
  metric_types.register_metric(_metric)


def _label_prediction_weight(element, eval_config, model_name, output_name,
                             example_weighted):
  """Yields (true class, probability vector, weight) of each example."""
  for label, prediction, weight in (
      metric_util.to_label_prediction_example_weight(
          element, eval_config=eval_config, model_name=model_name,
          output_name=output_name, example_weighted=example_weighted,
          flatten=False, squeeze=False)):
    label = np.asarray(label).reshape(-1)
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    if label.size == prediction.size and label.size > 1:  # one-hot label
      true_class = int(np.argmax(label))
    else:
      true_class = int(label[0])
    yield true_class, prediction, float(np.asarray(weight).reshape(-1)[0])


def _keys(name, model_name, output_name, sub_keys, example_weighted):
  return [metric_types.MetricKey(
      name=name, model_name=model_name, output_name=output_name,
      sub_key=sub_key, example_weighted=example_weighted)
          for sub_key in sub_keys]


def _confusion_computations(
    name: str,
    kind: str,
    class_ids: Optional[List[int]],
    n_classes: int = 0,
    eval_config: Optional[tfma.EvalConfig] = None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    sub_keys: Optional[List[Optional[metric_types.SubKey]]] = None,
    example_weighted: bool = False) -> metric_types.MetricComputations:
  """One combiner per model/output; keys: one value, or one per class id."""
  per_class = kind in _CONFUSION_METRICS and _CONFUSION_METRICS[kind][0]
  if per_class:
    if class_ids is not None:
      keys_sub = [metric_types.SubKey(class_id=c) for c in class_ids]
    else:
      keys_sub = [k for k in (sub_keys or []) if k is not None]
      if not keys_sub or any(k.class_id is None for k in keys_sub):
        raise ValueError(f'{name}: give class_ids in the config or '
                         'binarize.class_ids in the MetricsSpec')
  else:
    keys_sub = [None]
  computations = []
  for model_name in model_names or ['']:
    for output_name in output_names or ['']:
      keys = _keys(name, model_name, output_name, keys_sub, example_weighted)
      computations.append(metric_types.MetricComputation(
          keys=keys, preprocessors=None,
          combiner=_ConfusionCombiner(keys, kind, n_classes, eval_config,
                                      model_name, output_name,
                                      example_weighted)))
  return computations


class _ConfusionCombiner(beam.CombineFn):
  """Accumulates the top-1 confusion matrix {(true, predicted): weight}."""

  def __init__(self, keys: List[metric_types.MetricKey], kind: str,
               n_classes: int, eval_config: Optional[tfma.EvalConfig],
               model_name: str, output_name: str, example_weighted: bool):
    self._keys = keys
    self._kind = kind
    self._n_classes = n_classes
    self._eval_config = eval_config
    self._model_name = model_name
    self._output_name = output_name
    self._example_weighted = example_weighted

  def create_accumulator(self) -> Confusion:
    return {}

  def add_input(self, accumulator: Confusion,
                element: metric_types.StandardMetricInputs) -> Confusion:
    for true_class, prediction, w in _label_prediction_weight(
        element, self._eval_config, self._model_name, self._output_name,
        self._example_weighted):
      cell = (true_class, int(np.argmax(prediction)))
      accumulator[cell] = accumulator.get(cell, 0.0) + w
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[Confusion]) -> Confusion:
    merged: Confusion = {}
    for accumulator in accumulators:
      for cell, w in accumulator.items():
        merged[cell] = merged.get(cell, 0.0) + w
    return merged

  def extract_output(self, accumulator: Confusion
                     ) -> Dict[metric_types.MetricKey, object]:
    result = {}
    for key in self._keys:
      if self._kind == 'Matrix':
        result[key] = normalized_confusion_matrix(accumulator, self._n_classes)
      elif key.sub_key is None:
        result[key] = float(_CONFUSION_METRICS[self._kind][1](accumulator))
      else:
        result[key] = float(_CONFUSION_METRICS[self._kind][1](
            accumulator, key.sub_key.class_id))
    return result


def _calibration_computations(
    name: str,
    bins: int,
    eval_config: Optional[tfma.EvalConfig] = None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    example_weighted: bool = False) -> metric_types.MetricComputations:
  computations = []
  names = (name, RELIABILITY_COUNT_NAME, RELIABILITY_CONFIDENCE_NAME,
           RELIABILITY_ACCURACY_NAME)
  for model_name in model_names or ['']:
    for output_name in output_names or ['']:
      keys = [metric_types.MetricKey(
          name=n, model_name=model_name, output_name=output_name,
          example_weighted=example_weighted) for n in names]
      computations.append(metric_types.MetricComputation(
          keys=keys, preprocessors=None,
          combiner=_CalibrationCombiner(keys, bins, eval_config, model_name,
                                        output_name, example_weighted)))
  return computations


class _CalibrationCombiner(beam.CombineFn):
  """Accumulates per bin: [weight, weighted confidence, weighted hits]."""

  def __init__(self, keys, bins, eval_config, model_name, output_name,
               example_weighted):
    self._keys = keys
    self._bins = bins
    self._eval_config = eval_config
    self._model_name = model_name
    self._output_name = output_name
    self._example_weighted = example_weighted

  def create_accumulator(self) -> np.ndarray:
    return np.zeros((self._bins, 3))

  def add_input(self, accumulator: np.ndarray,
                element: metric_types.StandardMetricInputs) -> np.ndarray:
    for true_class, prediction, w in _label_prediction_weight(
        element, self._eval_config, self._model_name, self._output_name,
        self._example_weighted):
      top = int(np.argmax(prediction))
      confidence = float(prediction[top])
      index = min(int(confidence * self._bins), self._bins - 1)
      accumulator[index] += (w, w * confidence, w * float(top == true_class))
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[np.ndarray]
                         ) -> np.ndarray:
    accumulators = iter(accumulators)
    merged = np.array(next(accumulators), dtype=np.float64)
    for accumulator in accumulators:
      merged += accumulator
    return merged

  def extract_output(self, accumulator: np.ndarray):
    ece, count, confidence, accuracy = calibration.reliability_from_totals(
        accumulator)
    values = (ece, count, confidence, accuracy)
    return {key: value for key, value in zip(self._keys, values)}
