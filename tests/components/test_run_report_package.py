"""components/run_report/ as a package: its templates ship, its modules stay
small, its readers are the ones summary.py and mobile_pusher.py use.

Fast: no model, no TFMA run.
"""

import ast
import fnmatch
import inspect
import json
import math
import os

import pytest

from components import run_report
from components.run_report import readers
from components.run_report import render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _card(**changes):
  card = dict(
      name='tiny', version='3', generated='2026-01-01 00:00 UTC',
      verdict='blessed and pushed', intended_use='Decision support <b>.',
      out_of_scope='self-diagnosis', model_description='a model',
      data_lines=['one line'], splits=['train', 'test'],
      class_rows=[['mel', 3, 1]], biases=['few images'],
      test_examples='4', headline=[('Balanced accuracy', '0.5000')],
      class_metric_columns=['examples'],
      class_metric_rows=[{'label': 'mel', 'values': ['1']}],
      slices=[], limitations=['held-out split'], gating=['Decision: ok'])
  card.update(changes)
  return card


def test_templates_are_files_the_package_data_ships():
  for name in render.TEMPLATE_FILES:
    assert os.path.isfile(os.path.join(render.TEMPLATES_DIR, name)), name
  with open(os.path.join(ROOT, 'setup.py')) as f:
    tree = ast.parse(f.read())
  (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, 'attr', '') == 'setup']
  keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
              if k.arg in ('packages', 'package_data')}
  assert 'components.run_report' in keywords['packages']
  globs = keywords['package_data']['components.run_report']
  for name in render.TEMPLATE_FILES:
    assert any(fnmatch.fnmatch(f'templates/{name}', g) for g in globs), name


def test_model_card_renders_from_the_template_files():
  card = render.render_model_card(_card())
  assert card['md'].startswith('# Model card: tiny\n')
  assert '- **Balanced accuracy**: 0.5000' in card['md']
  assert 'No slices were evaluated.' in card['md']
  # Markdown is not escaped; the HTML card is, and inlines report.css.
  assert 'Decision support <b>.' in card['md']
  assert 'Decision support &lt;b&gt;.' in card['html']
  assert '<style>\n' + render.css() + '</style>' in card['html']
  assert render.css().startswith('body{')


def test_every_module_of_the_package_is_under_700_lines():
  directory = os.path.dirname(run_report.__file__)
  for name in os.listdir(directory):
    if name.endswith('.py'):
      with open(os.path.join(directory, name)) as f:
        assert len(f.readlines()) < 700, name


# --------------------------------------------------------------------------
# The one reader: the report's, the manifest's and pipeline/summary.py's.


def _write_evaluation(directory, baseline):
  """A TFMA output dir: metrics (candidate, baseline, model-independent
  example_count) on the overall slice and one group, and a failed change
  threshold."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_model_analysis.proto import metrics_for_slice_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_model_analysis.proto import validation_result_pb2  # pylint: disable=g-import-not-at-top
  models = ['candidate', 'baseline', ''] if baseline else ['']
  rows = (('balanced_accuracy', None, False, False, 0.61),
          ('auc', None, True, False, 0.8),
          ('class_recall', 3, False, False, 0.5),
          ('class_recall', 1, False, False, float('nan')),
          ('example_count', None, False, False, 40),
          ('balanced_accuracy', None, False, True, -0.02),
          ('accuracy', 'top', False, False, 0.7))
  with tf.io.TFRecordWriter(os.path.join(directory, 'metrics')) as w:
    for group in ((), (('sex', 'male'),)):
      record = metrics_for_slice_pb2.MetricsForSlice()
      for column, value in group:
        record.slice_key.single_slice_keys.add(column=column,
                                               bytes_value=value.encode())
      for model in models:
        for name, sub, aggregate, diff, value in rows:
          if diff and model != 'candidate':
            continue
          if baseline and model == '' and name != 'example_count':
            continue
          kv = record.metric_keys_and_values.add()
          kv.key.name, kv.key.model_name, kv.key.is_diff = name, model, diff
          if sub == 'top':
            kv.key.sub_key.top_k.value = 1
          elif sub is not None:
            kv.key.sub_key.class_id.value = sub
          if aggregate:
            kv.key.aggregation_type.macro_average = True
          kv.value.double_value.value = value + (0.1 if model == 'baseline'
                                                 else 0)
      w.write(record.SerializeToString())
  result = validation_result_pb2.ValidationResult(validation_ok=False)
  failure = result.metric_validations_per_slice.add().failures.add()
  failure.metric_key.name = 'balanced_accuracy'
  failure.metric_key.is_diff = True
  change = failure.metric_threshold.change_threshold
  change.absolute.value = -0.01
  change.direction = change.DESCRIPTOR.fields_by_name[
      'direction'].enum_type.values_by_name['HIGHER_IS_BETTER'].number
  failure.metric_value.double_value.value = -0.02
  with tf.io.TFRecordWriter(os.path.join(directory, 'validations')) as w:
    w.write(result.SerializeToString())


@pytest.mark.parametrize('baseline', [False, True])
def test_summary_reads_the_overall_slice_with_the_reports_reader(
    tmp_path, baseline):
  from pipeline import summary  # pylint: disable=g-import-not-at-top
  _write_evaluation(str(tmp_path), baseline)
  metrics, recall, failures, has_baseline = summary.read_evaluation(
      str(tmp_path), ['a', 'b', 'c', 'd'])
  expected = {'balanced_accuracy': 0.61, 'macro_auc': 0.8,
              'example_count': 40.0}
  if baseline:  # load_eval_result's names: '<name>_diff'.
    expected['balanced_accuracy_diff'] = -0.02
  assert metrics == pytest.approx(expected)
  assert recall['d'] == 0.5 and math.isnan(recall['b']) and len(recall) == 2
  assert has_baseline == baseline
  assert failures == ['balanced_accuracy (change vs baseline) = -0.0200, '
                      'threshold change vs baseline >= -0.01 (misses by '
                      '0.0100)']
  # The report reads the same values (its names: '(change vs baseline)').
  evaluation = readers.read_evaluation(str(tmp_path))
  assert evaluation.overall['balanced_accuracy'] == pytest.approx(0.61)
  assert evaluation.per_class[()][3]['class_recall'] == 0.5
  assert ('balanced_accuracy (change vs baseline)' in evaluation.overall
          ) == baseline
  assert evaluation.metrics[(('sex', 'male'),)]['balanced_accuracy'] == (
      pytest.approx(0.61))


def test_change_thresholds_are_worded_one_way():
  from tensorflow_model_analysis.proto import config_pb2  # pylint: disable=g-import-not-at-top
  from pipeline import summary  # pylint: disable=g-import-not-at-top
  lower = config_pb2.GenericChangeThreshold(
      direction=config_pb2.MetricDirection.LOWER_IS_BETTER)
  lower.absolute.value = 0.02
  higher = config_pb2.GenericChangeThreshold(
      direction=config_pb2.MetricDirection.HIGHER_IS_BETTER)
  higher.absolute.value = -0.05
  unset = config_pb2.GenericChangeThreshold()
  unset.absolute.value = -0.05
  assert readers.change_threshold_text(lower) == 'change vs baseline <= +0.02'
  assert readers.change_threshold_text(higher) == 'change vs baseline >= -0.05'
  assert readers.change_threshold_text(unset) == 'change vs baseline >= -0.05'
  threshold = config_pb2.MetricThreshold(change_threshold=lower)
  assert readers.threshold_text(threshold) == 'change vs baseline <= +0.02'
  # pylint: disable=protected-access
  assert summary._threshold_text(threshold, 0.05) == (
      'change vs baseline <= +0.02', pytest.approx(0.03))
  assert summary._threshold_text(
      config_pb2.MetricThreshold(change_threshold=higher), -0.06) == (
          'change vs baseline >= -0.05', pytest.approx(0.01))


def test_artifact_property_reads_tfx_artifacts_and_metadata_protos(tmp_path):
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  artifact = standard_artifacts.ModelBlessing()
  artifact.set_int_custom_property('blessed', 1)
  proto = metadata_store_pb2.Artifact()
  proto.custom_properties['blessed'].int_value = 1
  for a in (artifact, proto):
    assert readers.artifact_property(a, 'blessed') == 1
    assert readers.artifact_property(a, 'missing') is None
  assert readers.artifact_property(None, 'blessed') is None


def test_gate_files_and_the_ingestion_report(tmp_path):
  assert readers.read_gate_report_file(str(tmp_path)) is None
  assert readers.read_intervals(str(tmp_path)) is None
  assert readers.read_ingestion_report(str(tmp_path)) is None
  for name, value in (('gate_report.json', {'gates': []}),
                      ('intervals.json', {'draws': 3}),
                      ('ingestion_report.json', {'examples': 2})):
    (tmp_path / name).write_text(json.dumps(value))
  assert readers.read_gate_report_file(str(tmp_path)) == {'gates': []}
  assert readers.read_intervals(str(tmp_path)) == {'draws': 3}
  assert readers.read_ingestion_report(str(tmp_path)) == {'examples': 2}


def test_every_public_reader_function_is_a_package_name():
  """`run_report.X` (the lazy re-export) reaches every public function of
  the readers module: a reader missing from the map failed MobilePusher."""
  public = [name for name, value in vars(readers).items()
            if inspect.isfunction(value) and not name.startswith('_')
            and value.__module__ == readers.__name__]
  assert 'read_intervals' in public
  for name in public:
    assert getattr(run_report, name) is getattr(readers, name), name


def test_the_model_card_says_what_a_prior_correction_does():
  from components.run_report import metrics  # pylint: disable=g-import-not-at-top
  fit = {'method': 'temperature', 'applied': True, 'temperature': 1.2,
         'ece_before': 0.05, 'ece_after': 0.03}
  assert 'prior correction' not in metrics.calibration_limitation(fit)
  prior = {'applied': True, 'offsets': [0.1, -0.1]}
  for record in ({**fit, 'prior_correction': prior},
                 {'method': 'none', 'prior_correction': prior}):
    text = metrics.calibration_limitation(record)
    assert 'prior correction' in text and 'equal class prevalence' in text
  assert 'prior correction' not in metrics.calibration_limitation(
      {**fit, 'prior_correction': {'applied': False, 'reason': 'x'}})
