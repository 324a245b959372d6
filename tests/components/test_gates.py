"""The blessing gates on one real Evaluator run (TFMA) of the trained model.

The session's trained model is evaluated once, by TFX's own Evaluator
executor with the pipeline's EvalConfig, on the tiny archive's held-out
TFRecords (with itself as the baseline, so the regression gate has a diff to
judge).  Each gate is then re-judged on that output with its bound set just
above and just below the measured value: TFMA thresholds by TFMA's own
validator, the subgroup and regression gates by the IntervalGate executor
(whose point values must equal TFMA's on the same images), and the
MobilePusher refuses what a gate refused.  The metrics are also recomputed
with scikit-learn from the CSV of `skinlesion predict` on the same images.
"""

import json
import math
import os
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import mobile_exporter
from components import mobile_pusher
from components import interval_gate
from components.run_report import readers as report_readers
from components import tfma_metrics
from pipeline import cli
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import summary
from tests.conftest import publish
from tests.conftest import write_split_jpegs
from tests.pipeline.test_predict import read_csv

EPS = 1e-6
MEL = configs.LABELS.index(configs.MELANOMA_LABEL)
LOOSE = dict(min_balanced_accuracy=0.0, max_balanced_accuracy_drop=0.05,
             min_melanoma_recall=0.0)


@pytest.fixture(scope='module')
def evaluated(trained_model, tiny_tfrecords, tmp_path_factory):
  """(evaluation artifact, blessing artifact, model artifact) of one run."""
  root = tmp_path_factory.mktemp('evaluator')
  model = standard_artifacts.Model()
  model.uri = str(root / 'model')
  model.id = 11
  shutil.copytree(trained_model.serving_model_dir,
                  os.path.join(model.uri, 'Format-Serving'))
  baseline = standard_artifacts.Model()
  baseline.uri = model.uri
  baseline.id = 7
  examples = _test_examples(str(root / 'examples'), tiny_tfrecords[1])
  evaluation = standard_artifacts.ModelEvaluation()
  evaluation.uri = str(root / 'evaluation')
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(root / 'blessing')
  config = pipeline_lib.build_eval_config(configs.Settings(**LOOSE))
  evaluator_executor.Executor().Do(
      {'examples': [examples], 'model': [model], 'baseline_model': [baseline]},
      {'evaluation': [evaluation], 'blessing': [blessing]},
      {'eval_config': proto_utils.proto_to_json(config),
       'example_splits': json.dumps(['test'])})
  return evaluation, blessing, model


def _test_examples(uri, test_tfrecord):
  examples = standard_artifacts.Examples()
  examples.uri = uri
  examples.split_names = json.dumps(['test'])
  os.makedirs(os.path.join(examples.uri, 'Split-test'), exist_ok=True)
  shutil.copy(test_tfrecord,
              os.path.join(examples.uri, 'Split-test', 'data.gz'))
  return examples


def _overall_metrics(evaluation_uri):
  """{MetricKey: value} of the overall slice, as TFMA's validator sees it."""
  for metrics in tfma.load_metrics(evaluation_uri):
    if tfma.slicer.deserialize_slice_key(metrics.slice_key) == ():
      return {metric_types.MetricKey.from_proto(kv.key):
              kv.value.double_value.value
              for kv in metrics.metric_keys_and_values
              if kv.value.HasField('double_value')}
  raise AssertionError('no overall slice')


def _value(metrics, name, class_id=None, diff=False):
  (value,) = [v for k, v in metrics.items()
              if k.name == name and k.model_name == 'candidate'
              and k.is_diff == diff
              and (k.sub_key.class_id if k.sub_key else None) == class_id]
  return value


def _validate(metrics, **bounds):
  """TFMA's validation of the pipeline's thresholds under these bounds."""
  config = pipeline_lib.build_eval_config(
      configs.Settings(**dict(LOOSE, **bounds)))
  config = tfma.utils.update_eval_config_with_defaults(
      config, has_baseline=True, rubber_stamp=False)
  return metrics_validator.validate_metrics(((), metrics), config)


def _push_refused(blessing, subgroup_blessing, tmp_path):
  """MobilePusher with these blessings: True when it did not push."""
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(tmp_path / 'pushed')
  model = standard_artifacts.Model()
  model.uri = str(tmp_path / 'model')
  mobile = mobile_exporter.MobileModels()  # Read only when every gate passed.
  mobile.uri = str(tmp_path / 'mobile-not-there')
  inputs = {'model': [model], 'model_blessing': [blessing],
            'mobile_models': [mobile]}
  if subgroup_blessing is not None:
    inputs['gate_blessing'] = [subgroup_blessing]
  mobile_pusher.Executor().Do(
      inputs, {'pushed_model': [pushed]},
      {'base_directory': str(tmp_path / 'serving'),
       'require_gate_blessing': 1})
  refused = pushed.get_int_custom_property('pushed') == 0
  assert refused == (not os.path.exists(tmp_path / 'serving'))
  return refused


def _blessing(blessed):
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property('blessed', int(blessed))
  return blessing


def test_every_metric_on_every_slice(evaluated):
  evaluation, blessing, _ = evaluated
  assert blessing.get_int_custom_property('blessed') == 1
  result = tfma.load_eval_result(evaluation.uri, model_name='candidate')
  slices = dict(result.slicing_metrics)
  keys = {tuple(k for k, _ in s) for s in slices}
  assert {(), ('label',), ('sex',), ('age_band',), ('localization',),
          ('dataset',), ('age_band', 'sex')} <= keys
  assert {v for s in slices for k, v in s if k == 'age_band'} <= set(
      configs.AGE_BAND_NAMES)
  overall = slices[()]['']
  for name in ('example_count', 'accuracy', 'balanced_accuracy', 'macro_f1',
               'expected_calibration_error', 'macro_average: true\n_auc'):
    assert 'doubleValue' in overall[''][name], name
  matrix = overall['']['normalized_confusion_matrix']['arrayValue']
  assert matrix['shape'] == [7, 7]
  rows = np.array(matrix['float64Values'], float).reshape(7, 7).sum(axis=1)
  assert set(np.round(rows, 6)) <= {0.0, 1.0}
  assert overall['']['reliability_count']['arrayValue']['shape'] == [
      configs.CALIBRATION_BINS]
  per_class = overall[f'classId:{MEL}']
  for name in ('class_recall', 'class_precision', 'class_f1', 'auc',
               'melanoma_recall',
               'fairness_indicators_metrics/false_negative_rate@0.5',
               'fairness_indicators_metrics/false_positive_rate@0.25'):
    assert name in per_class, name
  # Fairness Indicators' rates on the demographic slices too.
  sex_slice = next(s for s in slices if s and s[0][0] == 'sex')
  assert ('fairness_indicators_metrics/false_negative_rate@0.5'
          in slices[sex_slice][''][f'classId:{MEL}'])
  plots = {field.name for p in tfma.load_plots(evaluation.uri)
           for kv in p.plot_keys_and_values
           for field, _ in kv.value.ListFields()}
  assert {'multi_class_confusion_matrix_at_thresholds',
          'calibration_histogram_buckets'} <= plots


def test_tfma_equals_sklearn_on_the_predictions_of_skinlesion_predict(
    evaluated, trained_model, tiny_tfrecords, tmp_path):
  evaluation, _, _ = evaluated
  images = write_split_jpegs(tiny_tfrecords[1], str(tmp_path / 'images'))
  version = publish(str(tmp_path / 'serving'), '1',
                    trained_model.serving_model_dir, with_tflite=False)
  out = str(tmp_path / 'preds.csv')
  assert cli.main(['predict', '--model', version, '--images',
                   str(tmp_path / 'images'), '--out', out]) == 0
  header, rows = read_csv(out)
  assert header[1:] == list(configs.LABELS)
  label_of = {os.path.splitext(os.path.basename(p))[0]: y for p, y in images}
  assert sorted(r[0] for r in rows) == sorted(label_of)  # The same examples.
  y_true = np.array([label_of[r[0]] for r in rows])
  probs = np.array([[float(x) for x in r[1:]] for r in rows])
  y_pred = probs.argmax(axis=1)
  present = sorted(set(y_true))

  metrics = _overall_metrics(evaluation.uri)
  assert _value(metrics, 'example_count') == len(rows)
  assert _value(metrics, 'balanced_accuracy') == pytest.approx(
      skm.balanced_accuracy_score(y_true, y_pred), abs=1e-9)
  assert _value(metrics, 'accuracy') == pytest.approx(
      skm.accuracy_score(y_true, y_pred), abs=1e-6)
  assert _value(metrics, 'macro_f1') == pytest.approx(
      skm.f1_score(y_true, y_pred, average='macro', zero_division=0),
      abs=1e-9)
  recall = skm.recall_score(y_true, y_pred, labels=present, average=None)
  precision = skm.precision_score(y_true, y_pred, labels=present,
                                  average=None, zero_division=0)
  for c, r, p in zip(present, recall, precision):
    assert _value(metrics, 'class_recall', c) == pytest.approx(r, abs=1e-9)
    assert _value(metrics, 'class_precision', c) == pytest.approx(p, abs=1e-9)
  assert _value(metrics, 'melanoma_recall', MEL) == pytest.approx(
      recall[present.index(MEL)], abs=1e-9)
  # One-vs-rest AUC: TFMA sums over configs.AUC_THRESHOLDS (10,000)
  # equal-width threshold buckets: the exact AUC of the scores rounded down
  # to those buckets (ties count half).  This 2-epoch model's scores are
  # nearly constant (about 1/7 each, within a few buckets), where the exact
  # AUC of the raw scores can lie 0.1 away; the bucketed one is what TFMA
  # computes.
  for c in present:
    bucketed = np.floor(probs[:, c] * configs.AUC_THRESHOLDS)
    assert _value(metrics, 'auc', c) == pytest.approx(
        skm.roc_auc_score(y_true == c, bucketed), abs=0.01)
  # ECE, recomputed from its definition.
  confidence = probs.max(axis=1)
  bins = np.minimum((confidence * configs.CALIBRATION_BINS).astype(int),
                    configs.CALIBRATION_BINS - 1)
  ece = sum(np.sum(bins == b) / len(rows) * abs(
      np.mean(y_pred[bins == b] == y_true[bins == b])
      - np.mean(confidence[bins == b]))
            for b in range(configs.CALIBRATION_BINS) if np.any(bins == b))
  assert _value(metrics, 'expected_calibration_error') == pytest.approx(
      ece, abs=1e-6)
  print(f'{len(rows)} test images: balanced accuracy '
        f'{_value(metrics, "balanced_accuracy"):.4f} (TFMA) = '
        f'{skm.balanced_accuracy_score(y_true, y_pred):.4f} (scikit-learn)')


@pytest.mark.parametrize('gate', ['balanced_accuracy', 'melanoma_recall'])
def test_each_tfma_gate_blocks_just_above_and_passes_just_below(
    evaluated, gate, tmp_path):
  evaluation, _, _ = evaluated
  metrics = _overall_metrics(evaluation.uri)
  if gate == 'balanced_accuracy':
    measured = _value(metrics, 'balanced_accuracy')
    above = dict(min_balanced_accuracy=measured + EPS)
    below = dict(min_balanced_accuracy=measured - EPS)
  else:
    measured = _value(metrics, 'melanoma_recall', MEL)
    above = dict(min_melanoma_recall=measured + EPS)
    below = dict(min_melanoma_recall=measured - EPS)
  assert not math.isnan(measured)
  assert _validate(metrics, **below).validation_ok
  result = _validate(metrics, **above)
  assert not result.validation_ok
  (failure,) = [f for s in result.metric_validations_per_slice
                for f in s.failures]
  text = summary.threshold_failure_text(failure, configs.LABELS)
  assert f'= {measured:.4f}' in text and 'misses by 0.0000' in text, text
  if gate == 'melanoma_recall':
    assert f'melanoma_recall [classId:{MEL} mel]' in text
  # The Evaluator's blessing is the validation's verdict; the pusher obeys.
  assert _push_refused(_blessing(result.validation_ok), _blessing(True),
                       tmp_path)


def _run_interval_gate(evaluated, tiny_tfrecords, tmp_path, baseline=True,
                       **params):
  _, _, model = evaluated
  examples = _test_examples(str(tmp_path / 'examples'), tiny_tfrecords[1])
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(tmp_path / 'gate_blessing')
  properties = dict(
      split='test', labels=json.dumps(list(configs.LABELS)),
      melanoma_label=configs.MELANOMA_LABEL,
      slice_features=json.dumps(pipeline_lib.interval_slice_features()),
      slice_families=json.dumps(['sex']), metric='balanced_accuracy',
      max_gap=0.1, min_examples=1, min_class_examples=1, exclude_unknown=1,
      max_balanced_accuracy_drop=0.02, confidence=0.95, draws=300, seed=0,
      calibration_bins=configs.CALIBRATION_BINS)
  properties.update(params)
  inputs = {'examples': [examples], 'model': [model]}
  if baseline:  # The model itself: a paired difference of exactly 0.
    inputs['baseline_model'] = [model]
  executor = interval_gate.IntervalGate.EXECUTOR_SPEC.executor_class()
  executor.Do(inputs, {'blessing': [blessing]}, properties)
  return blessing, report_readers.read_gate_report_file(blessing.uri)


def test_interval_gate_point_values_equal_tfmas(evaluated, tiny_tfrecords,
                                                tmp_path):
  evaluation, _, _ = evaluated
  blessing, report = _run_interval_gate(evaluated, tiny_tfrecords, tmp_path)
  found = report_readers.read_intervals(blessing.uri)
  overall = found['overall']['metrics']
  metrics = _overall_metrics(evaluation.uri)
  assert found['overall']['examples'] == _value(metrics, 'example_count')
  for name in ('balanced_accuracy', 'accuracy', 'macro_f1',
               'expected_calibration_error'):
    assert overall[name]['value'] == pytest.approx(
        _value(metrics, name), abs=1e-6), name
    assert overall[name]['lower'] <= overall[name]['value'] <= (
        overall[name]['upper']), name
  assert overall['melanoma_recall']['value'] == pytest.approx(
      _value(metrics, 'melanoma_recall', MEL), abs=1e-9)
  for c, name in enumerate(configs.LABELS):
    if overall[f'recall/{name}']['value'] is not None:
      assert overall[f'recall/{name}']['value'] == pytest.approx(
          _value(metrics, 'class_recall', c), abs=1e-9), name
  # Per group of every slice feature, and the groups add up.
  sexes = [e for e in found['slices'] if e['feature'] == 'sex']
  assert sum(e['examples'] for e in sexes) == found['overall']['examples']
  assert report['examples'] == found['overall']['examples']
  with np.load(os.path.join(blessing.uri, interval_gate.PREDICTIONS_FILE)) as p:
    assert p['probabilities'].shape == (report['examples'],
                                        len(configs.LABELS))
    assert len(p['lesion_ids']) == report['examples']


@pytest.mark.parametrize('which', ['subgroup', 'regression'])
def test_interval_gates_block_just_above_and_pass_just_below(
    evaluated, tiny_tfrecords, tmp_path, which):
  _, evaluator_blessing, model = evaluated
  if which == 'subgroup':
    _, report = _run_interval_gate(evaluated, tiny_tfrecords, tmp_path / 'm',
                                   max_gap=1.0)
    (gate,) = [g for g in report['gates'] if g['gate'] == 'subgroup']
    assert len(gate['groups']) >= 2, gate
    # A group fails when its difference's upper end is below -max_gap.
    upper = min(g['difference']['upper'] for g in gate['groups'].values())
    below, above = dict(max_gap=-upper + EPS), dict(max_gap=-upper - EPS)
  else:  # The candidate against itself: the paired difference is [0, 0].
    _, report = _run_interval_gate(evaluated, tiny_tfrecords, tmp_path / 'm')
    (gate,) = [g for g in report['gates'] if g['gate'] == 'regression']
    assert gate['difference'] == {'value': 0.0, 'lower': 0.0, 'upper': 0.0}
    below = dict(max_balanced_accuracy_drop=EPS)
    above = dict(max_balanced_accuracy_drop=-EPS)
  passing, report = _run_interval_gate(evaluated, tiny_tfrecords,
                                       tmp_path / 'pass', **below)
  assert passing.get_int_custom_property('blessed') == 1, report
  assert report['blessed'] is True
  failing, report = _run_interval_gate(evaluated, tiny_tfrecords,
                                       tmp_path / 'fail', **above)
  assert failing.get_int_custom_property('blessed') == 0
  assert failing.get_int_custom_property('current_model_id') == model.id
  (gate,) = [g for g in report['gates'] if g['gate'] == which]
  assert gate['passed'] is False and report['blessed'] is False
  (line,) = interval_gate.failures(report)
  assert line.startswith(f'{which} gate'), line
  if which == 'subgroup':
    assert gate['failed_groups'] and gate['failed_groups'][0] in line
  assert _push_refused(evaluator_blessing, failing, tmp_path / 'p1')
  # Both blessings positive: the pusher goes on to the mobile export (which
  # this test does not provide; test_mobile_components.py pushes for real).
  with pytest.raises(RuntimeError, match='MobileExporter did not export'):
    _push_refused(evaluator_blessing, passing, tmp_path / 'p2')


def test_no_baseline_passes_the_regression_gate(evaluated, tiny_tfrecords,
                                                tmp_path):
  _, report = _run_interval_gate(evaluated, tiny_tfrecords, tmp_path,
                                 baseline=False)
  (gate,) = [g for g in report['gates'] if g['gate'] == 'regression']
  assert gate['passed'] and gate['difference'] is None
  assert 'no blessed baseline' in gate['note']


def test_pusher_refuses_without_the_required_gap_blessing(evaluated,
                                                          tmp_path):
  _, evaluator_blessing, _ = evaluated
  assert _push_refused(evaluator_blessing, None, tmp_path)
