"""TFMA custom metrics for the Evaluator (built-in ones lack these).

Referenced from the EvalConfig by ``module='components.tfma_metrics'``; TFMA
imports this module in the Evaluator's workers.
"""

from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util

BALANCED_ACCURACY_NAME = 'balanced_accuracy'
CLASS_RECALL_NAME = 'class_recall'


class BalancedAccuracy(tfma.metrics.Metric):
  """Mean over classes of top-1 recall: the ISIC challenge's headline metric.

  A class's recall is the fraction of its examples whose highest-probability
  class is that class.  Classes absent from the slice's labels are left out
  of the mean (so a slice of one class reports that class's recall).
  """

  def __init__(self, name: str = BALANCED_ACCURACY_NAME):
    super().__init__(_computations, name=name, class_ids=None)


class ClassRecall(tfma.metrics.Metric):
  """Top-1 recall of each class id, one sub key (classId:N) per class.

  TFMA's binarized Recall thresholds each class's probability one-vs-rest;
  this counts an example as found only when its class is the arg max, the
  definition balanced accuracy averages.
  """

  def __init__(self, class_ids: List[int], name: str = CLASS_RECALL_NAME):
    super().__init__(_computations, name=name, class_ids=list(class_ids))


metric_types.register_metric(BalancedAccuracy)
metric_types.register_metric(ClassRecall)


def _computations(
    name: str,
    class_ids: Optional[List[int]],
    eval_config: Optional[tfma.EvalConfig] = None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    example_weighted: bool = False) -> metric_types.MetricComputations:
  """One combiner per model/output; keys: the mean, or one per class id."""
  computations = []
  for model_name in model_names or ['']:
    for output_name in output_names or ['']:
      sub_keys = ([metric_types.SubKey(class_id=c) for c in class_ids]
                  if class_ids is not None else [None])
      keys = [metric_types.MetricKey(
          name=name, model_name=model_name, output_name=output_name,
          sub_key=sub_key, example_weighted=example_weighted)
              for sub_key in sub_keys]
      computations.append(metric_types.MetricComputation(
          keys=keys, preprocessors=None,
          combiner=_ConfusionCombiner(keys, eval_config, model_name,
                                      output_name, example_weighted)))
  return computations


class _ConfusionCombiner(beam.CombineFn):
  """Accumulates (true class -> [weight seen, weight predicted correctly])."""

  def __init__(self, keys: List[metric_types.MetricKey],
               eval_config: Optional[tfma.EvalConfig], model_name: str,
               output_name: str, example_weighted: bool):
    self._keys = keys
    self._eval_config = eval_config
    self._model_name = model_name
    self._output_name = output_name
    self._example_weighted = example_weighted

  def create_accumulator(self) -> Dict[int, np.ndarray]:
    return {}

  def add_input(self, accumulator: Dict[int, np.ndarray],
                element: metric_types.StandardMetricInputs
                ) -> Dict[int, np.ndarray]:
    for label, prediction, weight in (
        metric_util.to_label_prediction_example_weight(
            element, eval_config=self._eval_config,
            model_name=self._model_name, output_name=self._output_name,
            example_weighted=self._example_weighted, flatten=False,
            squeeze=False)):
      label = np.asarray(label).reshape(-1)
      prediction = np.asarray(prediction).reshape(-1)
      if label.size == prediction.size and label.size > 1:  # one-hot label
        true_class = int(np.argmax(label))
      else:
        true_class = int(label[0])
      hit = float(int(np.argmax(prediction)) == true_class)
      w = float(np.asarray(weight).reshape(-1)[0])
      totals = accumulator.setdefault(true_class, np.zeros(2))
      totals += (w, w * hit)
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[Dict[int, np.ndarray]]
                         ) -> Dict[int, np.ndarray]:
    merged: Dict[int, np.ndarray] = {}
    for accumulator in accumulators:
      for cls, totals in accumulator.items():
        merged[cls] = merged.get(cls, np.zeros(2)) + totals
    return merged

  def extract_output(self, accumulator: Dict[int, np.ndarray]
                     ) -> Dict[metric_types.MetricKey, float]:
    recall = {cls: hit / seen for cls, (seen, hit) in accumulator.items()
              if seen > 0}
    result = {}
    for key in self._keys:
      if key.sub_key is None:  # The mean over the classes present.
        result[key] = (float(np.mean(list(recall.values()))) if recall
                       else float('nan'))
      else:
        result[key] = float(recall.get(key.sub_key.class_id, float('nan')))
    return result
