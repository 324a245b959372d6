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


def test_precision_f1_and_macro_f1_match_sklearn():
  from sklearn.metrics import f1_score  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import precision_score  # pylint: disable=g-import-not-at-top
  labels, probs = _data(seed=3)
  probs[:, 3] = 0.0  # Class 3 is never predicted: precision 0, F1 0.
  pred = probs.argmax(axis=1)
  ids = list(range(N_CLASSES))
  precision = _run_combiner(tfma_metrics.ClassPrecision(ids), labels, probs)
  f1 = _run_combiner(tfma_metrics.ClassF1(ids), labels, probs)
  expected_p = precision_score(labels, pred, labels=ids, average=None,
                               zero_division=0)
  expected_f1 = f1_score(labels, pred, labels=ids, average=None,
                         zero_division=0)
  for key, value in precision.items():
    assert value == pytest.approx(expected_p[key.sub_key.class_id], abs=1e-9)
  for key, value in f1.items():
    assert value == pytest.approx(expected_f1[key.sub_key.class_id], abs=1e-9)
  (macro,) = _run_combiner(tfma_metrics.MacroF1(), labels, probs).values()
  assert macro == pytest.approx(f1_score(labels, pred, average='macro',
                                         zero_division=0), abs=1e-9)


def test_normalized_confusion_matrix_matches_sklearn():
  from sklearn.metrics import confusion_matrix  # pylint: disable=g-import-not-at-top
  labels, probs = _data(seed=4)
  (matrix,) = _run_combiner(tfma_metrics.NormalizedConfusionMatrix(N_CLASSES),
                            labels, probs).values()
  expected = confusion_matrix(labels, probs.argmax(axis=1),
                              labels=list(range(N_CLASSES)), normalize='true')
  np.testing.assert_allclose(matrix, expected, atol=1e-12)


def test_expected_calibration_error_and_reliability_bins():
  labels, probs = _data(seed=5)
  out = _run_combiner(tfma_metrics.ExpectedCalibrationError(bins=10), labels,
                      probs)
  by_name = {k.name: v for k, v in out.items()}
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  bins = np.minimum((confidence * 10).astype(int), 9)
  expected = 0.0
  for b in range(10):
    chosen = bins == b
    if chosen.any():
      expected += chosen.mean() * abs(correct[chosen].mean()
                                      - confidence[chosen].mean())
      assert by_name['reliability_accuracy'][b] == pytest.approx(
          correct[chosen].mean())
      assert by_name['reliability_confidence'][b] == pytest.approx(
          confidence[chosen].mean())
    else:
      assert np.isnan(by_name['reliability_accuracy'][b])
  assert by_name['reliability_count'].sum() == len(labels)
  assert by_name['expected_calibration_error'] == pytest.approx(expected)
