"""The run report and model card (components/run_report/).

Unit tests on crafted inputs (slice tables and gate marks, the interval
gate's report, TFMA plot protos, reliability and Grad-CAM picks), then one
report built for real: the session's trained model, a real TFMA evaluation
of it on the tiny eval split, a real IntervalGate run with a bound set so
that its subgroup gate fails, no pusher.  That report is opened in headless
Chromium, which must render every section with its images and intervals and
log no console error; a screenshot is kept.
"""

import json
import os

import numpy as np
import pytest
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tfx.types import standard_artifacts

from components import image_example_gen
from components import interval_gate
from components import intervals
from components import mobile_exporter
from components import run_report
from models import calibration
from models import explain
from models import trainer
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from tests.conftest import open_in_headless_chromium
from tests.conftest import TINY_AUC_THRESHOLDS

LABELS = list(configs.LABELS)
MEL = LABELS.index('mel')


def test_file_names_agree_with_their_writers():
  assert run_report.INGESTION_REPORT_FILE == image_example_gen.REPORT_FILE
  assert run_report.HISTORY_FILE == trainer.HISTORY_FILE
  assert run_report.MODEL_SUMMARY_FILE == trainer.MODEL_SUMMARY_FILE
  assert run_report.MOBILE_REPORT_FILE == mobile_exporter.REPORT_FILE


def test_melanoma_is_the_settings_class_or_the_one_named_so():
  # pylint: disable=protected-access
  assert run_report._melanoma(LABELS) == 'mel'
  isic = list(configs.LABEL_SETS['isic2019'])
  assert run_report._melanoma(isic) is None  # 'mel' is not in it ...
  assert run_report._melanoma(isic, 'MEL') == 'MEL'  # ... the run's name is.
  assert run_report._melanoma(['Eksim', 'Kutil'], '') is None
  # The pipeline passes the class the settings resolve.
  r4 = configs.Settings(labels=('Eksim', 'Melanoma', 'Kutil'))
  assert run_report._melanoma(list(r4.labels), r4.melanoma_class) == (
      'Melanoma')


def _evaluation(**overrides):
  sex = lambda v: (('sex', v),)  # pylint: disable=unnecessary-lambda-assignment
  values = dict(
      metrics={(): {'example_count': 60.0, 'balanced_accuracy': 0.5},
               sex('female'): {'example_count': 30.0,
                               'balanced_accuracy': 0.62, 'accuracy': 0.7},
               sex('male'): {'example_count': 28.0,
                             'balanced_accuracy': 0.41, 'accuracy': 0.6},
               sex('unknown'): {'example_count': 2.0,
                                'balanced_accuracy': None, 'accuracy': 0.5},
               (('label', str(MEL)),): {'example_count': 9.0,
                                        'accuracy': 0.55}},
      per_class={sex('female'): {MEL: {'class_recall': 0.8}},
                 sex('male'): {MEL: {'class_recall': 0.5}},
                 (): {MEL: {'class_recall': 0.6}, 0: {'class_recall': 0.1}}},
      plots={}, class_plots={}, validation_ok=True, failures=[],
      thresholds=[])
  values.update(overrides)
  return run_report.Evaluation(**values)


GAP_FAILED = {
    'gate': 'subgroup', 'metric': 'mean recall over the classes with enough '
    'images', 'slice_family': 'sex',
    'groups': {'female': {'value': 0.62, 'rest': 0.41, 'passed': True,
                          'difference': {'value': 0.21, 'lower': 0.1,
                                         'upper': 0.3}},
               'male': {'value': 0.41, 'rest': 0.62, 'passed': False,
                        'difference': {'value': -0.21, 'lower': -0.3,
                                       'upper': -0.11}}},
    'excluded': {'unknown': {'examples': 2, 'reason': 'unknown is not a '
                             'group'}},
    'failed_groups': ['male'], 'bound': 0.1, 'confidence': 0.975,
    'passed': False,
    'note': 'male: 0.410 vs rest 0.620, difference -0.210 [-0.300, -0.110] '
            'lies below -0.100'}


def test_slice_tables_compute_spreads_and_mark_the_failed_group():
  tables = {t['family']: t for t in run_report.slice_tables(
      _evaluation(), LABELS, [GAP_FAILED])}
  assert set(tables) == {'sex', 'label'}
  sex = tables['sex']
  assert sex['columns'] == ['example_count', 'accuracy', 'balanced_accuracy',
                            'mel class_recall']
  rows = {r['group']: r for r in sex['rows']}
  assert rows['female']['values'] == [30, 0.7, 0.62, 0.8]
  assert rows['unknown']['values'] == [2, 0.5, None, None]
  # Gaps over the groups that have the metric; counts have none.
  assert sex['gaps'][0] is None
  assert sex['gaps'][1] == pytest.approx(0.2)
  assert sex['gaps'][2] == pytest.approx(0.21)
  assert sex['gaps'][3] == pytest.approx(0.3)
  assert sex['failed'] and not any(sex['failed_columns'])
  assert rows['male']['failed'] and not rows['female']['failed']
  assert not rows['unknown']['failed']
  # The label family: the group is the class name, no gate.
  assert [r['group'] for r in tables['label']['rows']] == ['mel']
  assert not tables['label']['failed']


def test_a_passed_gate_marks_nothing_and_other_families_are_untouched():
  passed = dict(GAP_FAILED, passed=True, failed_groups=[])
  tables = {t['family']: t for t in run_report.slice_tables(
      _evaluation(), LABELS, [passed, dict(GAP_FAILED,
                                           slice_family='age_band')])}
  assert not tables['sex']['failed']
  assert not any(r['failed'] for r in tables['sex']['rows'])
  assert tables['sex']['gates'] == [passed]


def test_an_evaluator_failure_on_a_slice_marks_its_row():
  failure = {'slice': (('sex', 'male'),), 'metric': 'balanced_accuracy',
             'class_id': None, 'value': 0.41, 'threshold': '>= 0.5',
             'message': ''}
  tables = {t['family']: t for t in run_report.slice_tables(
      _evaluation(failures=[failure]), LABELS, [])}
  rows = {r['group']: r['failed'] for r in tables['sex']['rows']}
  assert rows == {'female': False, 'male': True, 'unknown': False}


def test_per_class_table_puts_melanoma_first():
  columns, rows = run_report.per_class_table(_evaluation(), LABELS, None)
  assert columns == ['examples', 'class_recall']
  assert rows[0]['label'] == 'mel' and rows[0]['values'] == [9, 0.6]
  assert [r['label'] for r in rows[1:]] == [n for n in LABELS if n != 'mel']


def _blessing(tmp_path, name, blessed=None, report=None):
  artifact = standard_artifacts.ModelBlessing()
  artifact.uri = str(tmp_path / name)
  os.makedirs(artifact.uri)
  if blessed is not None:
    artifact.set_int_custom_property('blessed', int(blessed))
  if report is not None:
    with open(os.path.join(artifact.uri, interval_gate.GATE_REPORT_FILE),
              'w') as f:
      json.dump(report, f)
  return artifact


def test_gate_report_contract(tmp_path):
  report = {'gates': [GAP_FAILED], 'blessed': False}
  assert run_report.read_gate_report(
      _blessing(tmp_path, 'a', False, report)) == report
  assert run_report.read_gate_report(None) is None
  missing = run_report.read_gate_report(_blessing(tmp_path, 'b', True))
  assert missing['blessed'] is True and missing['gates'] == []
  assert interval_gate.GATE_REPORT_FILE in missing['note']


def test_interval_rows_format_and_order():
  found = {'overall': {'metrics': {
      'balanced_accuracy': {'value': 0.612, 'lower': 0.571, 'upper': 0.65},
      'melanoma_recall': {'value': 0.5, 'lower': None, 'upper': None},
      **{f'{kind}/{n}': {'value': 0.25, 'lower': 0.125, 'upper': 0.5}
         for kind in ('recall', 'precision') for n in LABELS}}}}
  headline, per_class = run_report.interval_rows(found, LABELS)
  assert headline == [('Melanoma recall (sensitivity)', '0.500 [n/a]'),
                      ('Balanced accuracy (mean per-class recall)',
                       '0.612 [0.571, 0.650]')]
  assert per_class[0] == ('mel', '0.250 [0.125, 0.500]',
                          '0.250 [0.125, 0.500]')
  assert run_report.interval_rows(None, LABELS) == ([], [])


def test_blessing_lists_each_threshold_its_value_and_the_failures(tmp_path):
  overall = {'balanced_accuracy': 0.52,
             'balanced_accuracy (change vs baseline)': -0.08,
             'example_count': 60.0}
  evaluation = _evaluation(
      metrics={(): overall},
      thresholds=[
          {'metric': 'BalancedAccuracy', 'slices': 'overall', 'kind': 'value',
           'threshold': '>= 0.5'},
          {'metric': 'BalancedAccuracy', 'slices': 'overall',
           'kind': 'change', 'threshold': 'change vs baseline >= -0.05'},
          {'metric': 'ClassRecall', 'slices': 'overall', 'kind': 'value',
           'threshold': '>= 0.7'}],
      failures=[
          {'slice': (), 'metric': 'balanced_accuracy (change vs baseline)',
           'class_id': None, 'value': -0.08,
           'threshold': 'change vs baseline >= -0.05', 'message': ''},
          {'slice': (), 'metric': 'class_recall', 'class_id': MEL,
           'value': 0.6, 'threshold': '>= 0.7', 'message': ''}])
  part = run_report._blessing_part(  # pylint: disable=protected-access
      run_report.ReportInputs(examples=None, evaluation=None,
                              blessing=_blessing(tmp_path, 'b', False),
                              model=None),
      evaluation, None, LABELS)
  gates = [(g['metric'], g['value'], g['passed']) for g in part['gates']]
  assert gates == [('balanced_accuracy', 0.52, True),
                   ('balanced_accuracy (change vs baseline)', -0.08, False),
                   ('class_recall', None, False)]
  assert part['failures'] == [
      'balanced_accuracy (change vs baseline) on overall = -0.0800, '
      'threshold change vs baseline >= -0.05',
      'class_recall of mel on overall = 0.6000, threshold >= 0.7']
  assert part['blessed'] is False and part['has_baseline']
  assert part['summary'].startswith(
      'Not blessed: the Evaluator did not bless the model (2 threshold(s) '
      'failed)')
  # The Evaluator blessed but the gap gate did not: not blessed.
  gap = {'gates': [GAP_FAILED], 'blessed': False}
  part = run_report._blessing_part(  # pylint: disable=protected-access
      run_report.ReportInputs(examples=None, evaluation=None,
                              blessing=_blessing(tmp_path, 'c', True),
                              model=None),
      _evaluation(), gap, LABELS)
  assert part['evaluator_blessed'] is True and part['blessed'] is False
  assert 'subgroup gate [sex]: male: 0.410 vs rest 0.620' in part['summary']


def test_confusion_matrix_and_roc_from_tfma_protos():
  plot = metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds()
  matrix = plot.matrices.add()
  for actual, predicted, n in ((0, 0, 3), (0, 1, 1), (1, 1, 2), (2, 0, 4)):
    matrix.entries.add(actual_class_id=actual, predicted_class_id=predicted,
                       num_weighted_examples=n)
  np.testing.assert_array_equal(
      run_report.confusion_from_tfma(plot, 3),
      [[3, 1, 0], [0, 2, 0], [4, 0, 0]])
  assert run_report.confusion_from_tfma(None, 3) is None
  roc = metrics_for_slice_pb2.ConfusionMatrixAtThresholds()
  for tp, fn, fp, tn in ((10, 0, 10, 0), (8, 2, 2, 8), (0, 10, 0, 10)):
    roc.matrices.add(true_positives=tp, false_negatives=fn,
                     false_positives=fp, true_negatives=tn)
  curves = run_report.roc_from_tfma(
      {('confusion_matrix_at_thresholds', MEL): roc}, LABELS)
  fpr, tpr, auc = curves['mel']
  np.testing.assert_allclose(fpr, [0.0, 0.2, 1.0])
  np.testing.assert_allclose(tpr, [0.0, 0.8, 1.0])
  assert auc == pytest.approx(0.5 * 0.2 * 0.8 + 0.8 * 0.9)


def test_reliability_from_a_tfma_calibration_plot():
  plot = metrics_for_slice_pb2.CalibrationHistogramBuckets()
  # (predictions summed, labels summed, examples) per TFMA bucket.
  for prediction, label, n in ((0.5, 0.0, 10), (1.5, 1.0, 10),
                               (4.5, 5.0, 6), (0.0, 0.0, 0)):
    bucket = plot.buckets.add()
    bucket.total_weighted_refined_prediction.value = prediction
    bucket.total_weighted_label.value = label
    bucket.num_weighted_examples.value = n
  predicted, observed, counts = run_report.reliability_from_tfma(plot)
  # 0.05 and 0.15 fall in the first two tenths, 0.75 in the eighth.
  assert counts[0] == 10 and counts[1] == 10 and counts[7] == 6
  assert counts.sum() == 26
  assert predicted[1] == pytest.approx(0.15) and observed[1] == 0.1
  assert predicted[7] == pytest.approx(0.75)
  assert observed[7] == pytest.approx(5 / 6)
  assert run_report.reliability_from_tfma(
      metrics_for_slice_pb2.CalibrationHistogramBuckets()) is None


def _predictions(labels, probabilities):
  return run_report.Predictions(np.array(labels), np.array(probabilities),
                                [str(i) for i in range(len(labels))],
                                [b''] * len(labels))


def test_reliability_and_ece():
  # Two images at 0.95 (one right), two at 0.55 (both right).
  predictions = _predictions(
      [0, 1, 0, 1], [[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
  confidence, accuracy, counts, ece = (
      run_report.reliability_from_predictions(predictions))
  assert counts[9] == 2 and counts[5] == 2 and counts.sum() == 4
  assert accuracy[9] == 0.5 and accuracy[5] == 1.0
  assert confidence[9] == pytest.approx(0.95)
  assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
  assert np.isnan(confidence[0]) and np.isnan(accuracy[0])  # Empty bin.


def test_report_ece_bins_as_the_trainer_and_the_evaluator_do():
  # 0.6 and 0.7 lie on bin edges: [0.6, 0.7) and [0.7, 0.8), as
  # int(c * bins) puts them (models/calibration, tfma_metrics).
  probabilities = [[0.6, 0.4], [0.7, 0.3], [0.3, 0.7], [0.2, 0.8]]
  labels = [0, 1, 1, 0]
  predictions = _predictions(labels, probabilities)
  _, _, counts, ece = run_report.reliability_from_predictions(predictions)
  assert counts[6] == 1 and counts[7] == 2 and counts[8] == 1
  assert ece == pytest.approx(calibration.expected_calibration_error(
      np.array(probabilities), np.array(labels), 10))


def test_gradcam_picks_most_confident_correct_and_wrong_per_class():
  labels = np.array([0, 0, 0, 1, 1])
  probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7],
                            [0.99, 0.01]])
  picks = run_report.pick_gradcam_examples(labels, probabilities, 3, 1)
  assert picks == {0: {'correct': [0], 'wrong': [2]},
                   1: {'correct': [3], 'wrong': [4]},
                   2: {'correct': [], 'wrong': []}}


def test_fmt():
  assert run_report.fmt(None) == '—'
  assert run_report.fmt(float('nan')) == '—'
  assert run_report.fmt(12) == '12'
  assert run_report.fmt(1.0) == '1.0000'
  assert run_report.fmt(0.123456) == '0.1235'


# --------------------------------------------------------------------------
# A report built for real from the session's trained model.


def _artifact(cls, uri, **properties):
  artifact = cls()
  artifact.uri = str(uri)
  for key, value in properties.items():
    if isinstance(value, int):
      artifact.set_int_custom_property(key, value)
    else:
      artifact.set_string_custom_property(key, value)
  return artifact


@pytest.fixture(scope='module')
def built_report(trained_model, tiny_tfrecords, tmp_path_factory):
  """report.html etc. of the trained model, evaluated by TFMA on 'eval'."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('report')
  # The Trainer's Model artifact layout: <uri>/Format-Serving.
  model_uri = root / 'model'
  os.makedirs(model_uri)
  os.symlink(trained_model.serving_model_dir, model_uri / 'Format-Serving')
  settings = configs.Settings(min_balanced_accuracy=0.0,
                              auc_thresholds=TINY_AUC_THRESHOLDS)
  eval_config = pipeline_lib.build_eval_config(settings)
  for spec in eval_config.metrics_specs:  # No baseline: no change gate.
    for metric in spec.metrics:
      for per_slice in metric.per_slice_thresholds:
        per_slice.threshold.ClearField('change_threshold')
  evaluation_uri = str(root / 'evaluation')
  result = tfma.run_model_analysis(
      eval_shared_model=tfma.default_eval_shared_model(
          trained_model.serving_model_dir, eval_config=eval_config),
      eval_config=eval_config, data_location=tiny_tfrecords[1],
      file_format='tfrecords', output_path=evaluation_uri)
  del result
  examples_uri = os.path.dirname(os.path.dirname(tiny_tfrecords[0]))
  examples = _artifact(standard_artifacts.Examples, examples_uri)
  examples.split_names = '["train", "eval"]'
  # The real IntervalGate, its bound set so that every sex group fails
  # (a difference's upper end is always below 1).
  gap = _artifact(standard_artifacts.ModelBlessing, str(root / 'gap'))
  interval_gate.IntervalGate.EXECUTOR_SPEC.executor_class().Do(
      {'examples': [examples],
       'model': [_artifact(standard_artifacts.Model, model_uri)]},
      {'blessing': [gap]},
      dict(split='eval', labels=json.dumps(LABELS), melanoma_label='mel',
           slice_features=json.dumps(pipeline_lib.interval_slice_features()),
           slice_families=json.dumps(['sex']), metric='balanced_accuracy',
           max_gap=-1.0, min_examples=1, min_class_examples=1,
           exclude_unknown=1, max_balanced_accuracy_drop=0.02,
           confidence=0.95, draws=300, seed=0,
           calibration_bins=configs.CALIBRATION_BINS))
  inputs = run_report.ReportInputs(
      examples=examples,
      evaluation=_artifact(standard_artifacts.ModelEvaluation,
                           evaluation_uri),
      blessing=_blessing(root, 'blessing', True),
      model=_artifact(standard_artifacts.Model, model_uri),
      model_run=_artifact(standard_artifacts.ModelRun,
                          trained_model.model_run_dir),
      gate_blessing=gap)
  out = str(root / 'out')
  numbers = run_report.build_report(inputs, out, 'tiny', split='eval',
                                    gradcam_per_class=1)
  return out, numbers


def test_built_report_numbers(built_report):
  out, numbers = built_report
  for name in (run_report.REPORT_FILE, run_report.MODEL_CARD_MD,
               run_report.MODEL_CARD_HTML, run_report.DATA_FILE):
    assert os.path.getsize(os.path.join(out, name)) > 500, name
  with open(os.path.join(out, run_report.DATA_FILE)) as f:
    assert json.load(f) == numbers
  overall = dict(numbers['evaluation']['overall'])
  assert overall['example_count'] == 89  # The tiny archive's odd half.
  assert 0.0 <= overall['balanced_accuracy'] <= 1.0
  # Gates: the Evaluator blessed, the gap gate did not: not blessed.
  assert numbers['blessing']['evaluator_blessed'] is True
  assert numbers['blessing']['blessed'] is False
  assert 'subgroup gate [sex]' in numbers['blessing']['summary']
  # The IntervalGate's intervals: {"value", "lower", "upper"}, with the
  # same point value as TFMA's on the same images.
  ba = numbers['intervals']['overall']['metrics']['balanced_accuracy']
  assert set(ba) == {'value', 'lower', 'upper'}
  assert ba['lower'] <= ba['value'] <= ba['upper']
  assert ba['value'] == pytest.approx(overall['balanced_accuracy'], abs=1e-6)
  assert numbers['evaluation']['interval_rows'][1] == [
      'Balanced accuracy (mean per-class recall)', intervals.text(ba)]
  assert numbers['pushed']['pushed'] is False
  assert 'did not run' in numbers['pushed']['reason']
  # Grad-CAM came from the SavedModel's own signature, with the same
  # probabilities as serving_default.
  assert numbers['explanations']['note'] is None
  assert numbers['explanations']['max_probability_difference'] < 1e-4
  assert explain.GRADCAM_SIGNATURE in numbers['signatures']
  # ROC and reliability from predictions (the EvalConfig has no such plot).
  roc_auc = numbers['evaluation']['roc_auc']
  assert set(roc_auc) == set(LABELS), roc_auc
  assert all(0.0 <= v <= 1.0 for v in roc_auc.values()), roc_auc
  assert 0.0 <= numbers['evaluation']['top1_ece'] <= 1.0
  assert numbers['training']['epochs'] == 2
  assert 'feature_map' in numbers['training']['summary']
  sex = next(t for t in numbers['slices'] if t['family'] == 'sex')
  assert sex['failed']


def test_model_card_says_what_it_must(built_report):
  out, numbers = built_report
  with open(os.path.join(out, run_report.MODEL_CARD_MD)) as f:
    card = f.read()
  for heading in ('## Intended use', '## Training data and its known biases',
                  '## Metrics', '### Per slice', '## Limitations',
                  '## How it was gated'):
    assert heading in card, heading
  assert 'not a diagnosis' in card
  assert 'Fitzpatrick' in card
  # Melanoma recall is the first metric, then balanced accuracy.
  metrics = card.split('## Metrics')[1]
  assert metrics.index('Melanoma recall') < metrics.index('Balanced accuracy')
  ba = numbers['intervals']['overall']['metrics']['balanced_accuracy']
  assert ('**Balanced accuracy (mean per-class recall)**: '
          f'{intervals.text(ba)}') in metrics
  assert 'bootstrap over lesions' in metrics
  assert 'recall [95% interval]' in metrics
  assert 'subgroup gate over sex: FAILED (' in card
  assert 'regression gate: passed (no blessed baseline' in card
  with open(os.path.join(out, run_report.MODEL_CARD_HTML)) as f:
    page = f.read()
  assert 'not a diagnosis' in page and '<section id="gating">' in page


def test_report_is_self_contained(built_report):
  out, _ = built_report
  with open(os.path.join(out, run_report.REPORT_FILE)) as f:
    page = f.read()
  assert '<script' not in page
  for reference in ('src="http', "src='http", 'href="http', '@import',
                    'url('):
    assert reference not in page, reference
  assert page.count('src="data:image/png;base64,') >= 5
  for section in run_report.SECTIONS:
    assert f'<section id="{section}">' in page, section


def test_report_renders_in_headless_chromium(built_report, tmp_path):
  out, numbers = built_report
  ba = numbers['intervals']['overall']['metrics']['balanced_accuracy']
  female = next(e['metrics']['balanced_accuracy']
                for e in numbers['intervals']['slices']
                if (e['feature'], e['group']) == ('sex', 'female'))
  images = open_in_headless_chromium(
      os.path.join(out, run_report.REPORT_FILE), run_report.SECTIONS,
      tmp_path / 'report.png', expect_text={
          'evaluation': ['95% intervals', intervals.text(ba)],
          'slices': [intervals.text(female)],
          'blessing': ['Subgroup and regression gates', 'FAILED']})
  # Training curves, evaluation charts and the Grad-CAM grid are images.
  assert images['training'] == 2
  assert images['evaluation'] >= 3
  assert images['explanations'] == 1
  assert os.path.getsize(tmp_path / 'report.png') > 10_000


# --------------------------------------------------------------------------
# Why the report's pusher input is optional: LocalDagRunner semantics.

from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfx.dsl.component.experimental.annotations import InputArtifact  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfx.dsl.component.experimental.annotations import OutputArtifact  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfx.dsl.component.experimental.decorators import component  # pylint: disable=g-import-not-at-top,wrong-import-position

from components import anomalies_gate  # pylint: disable=g-import-not-at-top,wrong-import-position


@component
def Pusherlike(model: InputArtifact[standard_artifacts.Model],
               pushed: OutputArtifact[standard_artifacts.PushedModel]):
  del model, pushed


@component
def Reportlike(report: OutputArtifact[run_report.RunReport],
               pushed: InputArtifact[standard_artifacts.PushedModel] = None):
  with open(os.path.join(report.uri, 'saw'), 'w') as f:
    f.write('nothing' if pushed is None else pushed.uri)


def test_local_dag_runner_runs_a_node_whose_optional_producer_was_skipped(
    tmp_path):
  """A producer skipped for lack of inputs leaves its optional readers be.

  A resolver that finds no Model starves the pusher-like node (skipped, the
  run does not fail); the report-like node, which reads its output as an
  optional input, still runs and sees nothing.  This is what the
  RunReporter's optional ``pushed_model`` / ``mobile_models`` rely on.
  """
  nothing = tfx.dsl.Resolver(
      strategy_class=anomalies_gate.LatestOrNoneStrategy,
      model=tfx.dsl.Channel(type=standard_artifacts.Model)).with_id('none')
  pusher = Pusherlike(model=nothing.outputs['model'])
  reporter = Reportlike(pushed=pusher.outputs['pushed'])
  tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
      pipeline_name='optional-input', pipeline_root=str(tmp_path / 'root'),
      components=[nothing, pusher, reporter],
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              str(tmp_path / 'metadata.db')))))
  saw = [p for p in (tmp_path / 'root').rglob('saw')]
  assert [p.read_text() for p in saw] == ['nothing']
  assert not list((tmp_path / 'root').glob('Pusherlike/pushed/*'))
