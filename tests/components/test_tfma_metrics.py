"""The custom TFMA metrics agree with scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import recall_score
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from components import tfma_metrics

N_CLASSES = 7


def _data(n=300, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice(N_CLASSES, size=n, p=[.05, .05, .1, .02, .1, .65, .03])
  logits = rng.normal(size=(n, N_CLASSES))
  logits[np.arange(n), labels] += 1.2  # Better than chance, not perfect.
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return labels, probs


def _run_combiner(metric, labels, probs):
  (computation,) = metric.computations(eval_config=tfma.EvalConfig())
  combiner = computation.combiner
  accumulators = []
  for part in np.array_split(np.arange(len(labels)), 3):  # Merged in parts.
    acc = combiner.create_accumulator()
    for i in part:
      acc = combiner.add_input(acc, metric_types.StandardMetricInputs(
          labels=np.array([labels[i]]), predictions=probs[i],
          example_weights=np.array([1.0])))
    accumulators.append(acc)
  return combiner.extract_output(combiner.merge_accumulators(accumulators))


def test_balanced_accuracy_matches_sklearn():
  labels, probs = _data()
  result = _run_combiner(tfma_metrics.BalancedAccuracy(), labels, probs)
  (value,) = result.values()
  expected = balanced_accuracy_score(labels, probs.argmax(axis=1))
  assert value == pytest.approx(expected, abs=1e-9)


def test_class_recall_matches_sklearn_per_class():
  labels, probs = _data(seed=1)
  result = _run_combiner(tfma_metrics.ClassRecall(list(range(N_CLASSES))),
                         labels, probs)
  expected = recall_score(labels, probs.argmax(axis=1), average=None,
                          labels=list(range(N_CLASSES)))
  for key, value in result.items():
    assert key.name == tfma_metrics.CLASS_RECALL_NAME
    assert value == pytest.approx(expected[key.sub_key.class_id], abs=1e-9)


def test_absent_classes_are_left_out_of_the_mean():
  labels = np.array([0, 0, 1, 1])
  probs = np.eye(N_CLASSES)[[0, 1, 1, 1]]
  result = _run_combiner(tfma_metrics.BalancedAccuracy(), labels, probs)
  assert list(result.values()) == [pytest.approx(0.75)]


def test_metrics_run_inside_tfma(tmp_path):
  """Through TFMA's own evaluation (slicing, thresholds), as the Evaluator."""
  labels, probs = _data(n=120, seed=2)
  frame = pd.DataFrame({'label': labels, 'prediction': list(probs),
                        'sex': np.where(np.arange(120) % 2, 'male', 'female')})
  config = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key='label',
                                  prediction_key='prediction')],
      slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['sex'])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='BalancedAccuracy',
                            module=tfma_metrics.__name__)])])
  result = tfma.analyze_raw_data(frame, config, output_path=str(tmp_path))
  overall = dict(result.slicing_metrics)[()]['']['']
  expected = balanced_accuracy_score(labels, probs.argmax(axis=1))
  assert overall['balanced_accuracy']['doubleValue'] == pytest.approx(expected)
