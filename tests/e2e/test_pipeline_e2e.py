"""The whole pipeline on tiny generated data, for real (no stage faked).

Run 1 (project CLI, loose blessing gates, the default parity gate):
ingestion -> ... -> blessed -> float16 and int8 .tflite judged on the test
split -> one version directory with the SavedModel, the .tflite files,
labels.txt and manifest.json; the pushed .tflite files are then run by the
TFLite Task Library (a separate venv, as an app would) on the test JPEGs.
Run 2 (TFX CLI, same home, impossible gate): the cached components are
reused, the candidate is not blessed, nothing is converted or pushed.
Both runs end with the RunReporter: run 1's report and model card say
blessed and pushed (the report is opened in headless Chromium), run 2's say
why not.
"""

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

from components import image_example_gen
from components import intervals as intervals_lib
from components import run_report
from mobile_export import release
from mobile_export import tflite
from models import features
from models import preprocessing
from pipeline import cli
from pipeline import configs
from pipeline import summary
from tests.conftest import LOOSE_GATES
from tests.conftest import TINY_AUC_THRESHOLDS
from tests.conftest import cli_with_settings
from tests.conftest import open_in_headless_chromium

pytestmark = pytest.mark.e2e

IMAGE_SIZE = 32
# Task Library vs tf.lite.Interpreter: bound on score differences, and the
# top-1 lead below which an image is a near-tie (measured: at most 0.016).
TIE = 0.03


def _settings(archive, home, **overrides):
  # Loose gates: this tiny model is near chance and its test split has ~20
  # images, where one top-1 flip between near-tied classes costs ~5 points
  # of agreement.  The default parity gate is exercised in
  # tests/components/test_mobile_components.py.
  values = dict(data_root=archive, home=home, image_size=IMAGE_SIZE, epochs=10,
                width=0.25, batch_size=16, tflite_min_top1_agreement=0.85,
                tflite_max_balanced_accuracy_drop=0.1,
                auc_thresholds=TINY_AUC_THRESHOLDS, **LOOSE_GATES)
  values.update(overrides)
  return configs.Settings(**values)


@pytest.fixture(scope='module')
def first_run(tiny_archive, tmp_path_factory):
  home = str(tmp_path_factory.mktemp('home'))
  settings = _settings(tiny_archive, home)
  code = cli_with_settings(settings, ['run', '--data', tiny_archive, '--home',
                                       home])
  assert code == 0
  return settings, summary.latest_run(settings)


def _split_examples(examples_uri):
  """split -> list of parsed tf.train.Example, read straight from TFRecords."""
  out = {}
  for split_dir in sorted(glob.glob(os.path.join(examples_uri, 'Split-*'))):
    split = os.path.basename(split_dir)[len('Split-'):]
    out[split] = [tf.train.Example.FromString(r.numpy()) for r in
                  preprocessing.read_examples([os.path.join(split_dir, '*')])]
  return out


def _string(example, key):
  return example.features.feature[key].bytes_list.value[0].decode()


def test_every_component_ran_and_model_was_blessed(first_run):
  _, run = first_run
  states = {c.node_id: c.state for c in run.components}
  for node in ('ImageExampleGen', 'ImportSchemaGen', 'StatisticsGen',
               'ExampleValidator', 'AnomaliesGate', 'DataReport', 'Trainer',
               'Evaluator', 'IntervalGate', 'MobileExporter',
               'MobilePusher', 'RunReporter'):
    assert states.get(node) == 'COMPLETE', (node, states)
  assert run.blessed is True
  assert run.evaluator_blessed is True and run.gate_blessed is True
  assert 0.0 <= run.metrics['balanced_accuracy'] <= 1.0
  for name in ('macro_f1', 'macro_auc', 'expected_calibration_error',
               'accuracy'):
    assert 0.0 <= run.metrics[name] <= 1.0, name
  # Every class gets a recall entry; each class with test images a value.
  assert set(run.per_class_recall) == set(configs.LABELS), run.per_class_recall
  in_test = {name for name, n in run.ingestion_report()[
      'examples_per_split_and_class']['test'].items() if n}
  assert in_test, 'no test images'
  for name in in_test:
    assert 0.0 <= run.per_class_recall[name] <= 1.0, (name, run.per_class_recall)
  # The subgroup gate compared sex, age band and site groups with the rest
  # on the test split; the regression gate had no baseline (a first run).
  gates = {g.get('slice_family', g['gate']): g
           for g in run.gate_report['gates']}
  assert set(gates) == set(configs.SUBGROUP_GAP_FAMILIES) | {'regression'}
  assert gates['sex']['groups'] and gates['sex']['passed']
  for group in gates['sex']['groups'].values():
    difference = group['difference']
    assert difference['lower'] <= difference['value'] <= difference['upper']
  assert set(gates['age_band']['groups']) | set(
      gates['age_band']['excluded']) <= set(configs.AGE_BAND_NAMES)
  assert gates['regression']['difference'] is None
  # Every headline metric with its interval; the point values are TFMA's.
  overall = run.intervals['overall']['metrics']
  for name in ('balanced_accuracy', 'accuracy', 'macro_f1',
               'expected_calibration_error'):
    assert overall[name]['value'] == pytest.approx(run.metrics[name],
                                                   abs=1e-6), name
    assert overall[name]['lower'] <= overall[name]['value'] <= (
        overall[name]['upper'])
  assert 'balanced_accuracy' in run.format() and '[' in run.format()


def test_record_counts_equal_input_counts(first_run, tiny_archive):
  _, run = first_run
  with open(os.path.join(tiny_archive, 'HAM10000_metadata.csv')) as f:
    input_rows = sum(1 for _ in f) - 1
  splits = _split_examples(run.examples_uri)
  assert set(splits) == {'train', 'eval', 'test'}
  assert sum(len(v) for v in splits.values()) == input_rows
  with open(os.path.join(run.examples_uri,
                         image_example_gen.REPORT_FILE)) as f:
    report = json.load(f)
  assert report['input_records'] == report['examples'] == input_rows
  assert report['examples_per_split'] == {k: len(v) for k, v in splits.items()}
  image_ids = [_string(ex, features.IMAGE_ID_KEY)
               for exs in splits.values() for ex in exs]
  assert len(set(image_ids)) == input_rows


def test_no_lesion_in_two_splits(first_run):
  _, run = first_run
  lesion_splits = collections.defaultdict(set)
  for split, examples in _split_examples(run.examples_uri).items():
    for ex in examples:
      lesion_splits[_string(ex, features.LESION_ID_KEY)].add(split)
  shared = {k: v for k, v in lesion_splits.items() if len(v) > 1}
  assert not shared
  # The archive does have multi-image lesions, so the check means something.
  assert any(len(v) == 1 for v in lesion_splits.values())


def test_schema_gives_image_an_image_domain(first_run):
  settings, _ = first_run
  schema_files = glob.glob(os.path.join(settings.pipeline_root,
                                        'ImportSchemaGen', 'schema', '*',
                                        'schema.pbtxt'))
  assert schema_files
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  schema = text_format.Parse(open(schema_files[0]).read(), schema_pb2.Schema())
  image = [f for f in schema.feature if f.name == features.IMAGE_KEY][0]
  assert image.HasField('image_domain')


def test_pushed_savedmodel_answers_both_signatures(first_run):
  _, run = first_run
  assert run.pushed_model and os.path.exists(
      os.path.join(run.pushed_model, 'saved_model.pb'))
  loaded = tf.saved_model.load(run.pushed_model)
  examples = _split_examples(run.examples_uri)['test'][:8]
  serialized = tf.constant([ex.SerializeToString() for ex in examples])
  by_example = loaded.signatures[features.EXAMPLE_SIGNATURE](
      examples=serialized)[features.PREDICTION_KEY].numpy()
  jpegs = tf.constant([ex.features.feature[features.IMAGE_KEY].bytes_list
                       .value[0] for ex in examples])
  images = preprocessing.decode_batch(jpegs, IMAGE_SIZE)
  by_image = loaded.signatures[features.IMAGE_SIGNATURE](
      images=images)[features.PREDICTION_KEY].numpy()
  assert by_example.shape == (8, len(configs.LABELS))
  np.testing.assert_allclose(by_example.sum(axis=1), 1.0, atol=1e-5)
  # Same preprocessing on both paths: same probabilities.
  np.testing.assert_allclose(by_example, by_image, atol=1e-5)


def _test_jpegs(run, directory, count=None):
  """(JPEG paths, labels) of the test split, written as the files they were."""
  examples = _split_examples(run.examples_uri)['test'][:count]
  paths = []
  for i, example in enumerate(examples):
    path = os.path.join(directory, f'{i:03d}.jpg')
    with open(path, 'wb') as f:
      f.write(example.features.feature[features.IMAGE_KEY].bytes_list
              .value[0])
    paths.append(path)
  return paths, [example.features.feature[features.LABEL_KEY].int64_list
                 .value[0] for example in examples]


def test_both_tflite_formats_passed_parity_and_were_pushed(first_run):
  _, run = first_run
  assert run.mobile_verdicts is not None
  assert {f: v['passed'] for f, v in run.mobile_verdicts.items()} == {
      'float16': True, 'int8': True}, run.mobile_verdicts
  assert run.pushed_tflite == [
      os.path.join(run.pushed_model, tflite.file_name(fmt))
      for fmt in configs.TFLITE_FORMATS]
  text = run.format()
  assert 'float16  PASSED' in text and 'int8     PASSED' in text


@pytest.mark.parametrize('fmt', configs.TFLITE_FORMATS)
def test_pushed_tflite_returns_seven_probabilities(first_run, fmt):
  _, run = first_run
  path = os.path.join(run.pushed_model, tflite.file_name(fmt))
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  assert inp['dtype'] == (np.uint8 if fmt == 'int8' else np.float32)
  assert list(inp['shape']) == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
  example = _split_examples(run.examples_uri)['test'][0]
  pixels = preprocessing.decode_and_resize(
      example.features.feature[features.IMAGE_KEY].bytes_list.value[0],
      IMAGE_SIZE).numpy()
  interpreter.set_tensor(inp['index'],
                         tflite.model_input(pixels[None], inp['dtype']))
  interpreter.invoke()
  probs = interpreter.get_tensor(out['index'])[0]
  assert probs.shape == (len(configs.LABELS),)
  assert out['dtype'] == np.float32
  assert abs(float(probs.sum()) - 1.0) < 0.02
  with open(os.path.join(run.pushed_model, 'labels.txt')) as f:
    assert f.read().split() == list(configs.LABELS)


def test_version_directory_is_complete_and_its_manifest_true(first_run):
  settings, run = first_run
  version = os.path.basename(run.pushed_model)
  # Nothing but complete versions under the serving directory.
  assert os.listdir(settings.serving_model_dir) == [version]
  assert run.manifest == os.path.join(run.pushed_model, 'manifest.json')
  manifest = release.read_json(run.manifest)
  assert manifest['model_version'] == version
  assert manifest['labels'] == list(configs.LABELS)
  assert manifest['files'] == release.file_inventory(run.pushed_model)
  assert {'saved_model.pb', 'labels.txt', 'model_float16.tflite',
          'model_int8.tflite'} <= set(manifest['files'])
  for fmt in configs.TFLITE_FORMATS:
    verdict = manifest['parity']['formats'][fmt]
    assert verdict['passed'] and verdict['pushed'], verdict
    assert verdict['top1_agreement'] >= settings.tflite_min_top1_agreement
    assert (verdict['balanced_accuracy_drop']
            <= settings.tflite_max_balanced_accuracy_drop)
    with open(os.path.join(run.pushed_model, tflite.file_name(fmt)),
              'rb') as f:
      assert tflite.read_metadata(f.read())['version'] == version
  assert manifest['metrics']['saved_model']['balanced_accuracy'] == (
      pytest.approx(run.metrics['balanced_accuracy'], abs=1e-6))
  assert manifest['versions']['tensorflow'] == tf.__version__
  # Why it was allowed out: every gate with its value, the calibration.
  blessing = manifest['blessing']
  assert blessing['evaluator_blessed'] and blessing['interval_gate_blessed']
  gates = {g['metric']: g for g in blessing['gates']}
  assert gates['balanced_accuracy']['value'] == pytest.approx(
      run.metrics['balanced_accuracy'], abs=1e-6)
  assert gates['melanoma_recall']['value'] is not None
  assert all(g['passed'] for g in blessing['gates'])
  assert {g.get('slice_family') for g in blessing['interval_gates']} == {
      'sex', 'age_band', 'localization', None}
  ba = blessing['test_intervals']['balanced_accuracy']
  assert ba['value'] == pytest.approx(run.metrics['balanced_accuracy'],
                                      abs=1e-6)
  assert ba['lower'] <= ba['value'] <= ba['upper']
  assert 'lesions' in blessing['test_intervals']['method']
  assert blessing['test_metrics']['expected_calibration_error'] >= 0
  with open(os.path.join(run.pushed_model, 'calibration.json')) as f:
    assert blessing['calibration'] == json.load(f)
  assert blessing['calibration']['fitted_on'] == 'eval split'


@pytest.mark.parametrize('fmt', configs.TFLITE_FORMATS)
def test_task_library_classifies_jpegs_like_the_interpreter(
    first_run, fmt, task_library_python, tmp_path):
  from benchmarks import task_library_agreement  # pylint: disable=g-import-not-at-top
  _, run = first_run
  path = os.path.join(run.pushed_model, tflite.file_name(fmt))
  jpegs, _ = _test_jpegs(run, str(tmp_path))
  # The Task Library classifies the JPEG files from the metadata alone; the
  # reference is tf.lite.Interpreter on our own preprocessing.
  result = task_library_agreement.compare(path, jpegs, task_library_python,
                                          tie=TIE)
  # Everything the Task Library needed came from the metadata.
  assert result['labels'] == list(configs.LABELS)
  assert result['version'] == os.path.basename(run.pushed_model)
  print(f'{fmt}: {result}')
  # The Task Library decodes and resizes with its own code (about one grey
  # level from TensorFlow's, see tests/mobile_export/test_task_library.py):
  # scores stay close, and top-1 is the same on every image but near-ties.
  assert result['max_sum_error'] <= 0.02
  assert result['max_score_difference'] <= TIE
  assert result['top1_agreement_outside_near_ties'] in (None, 1.0)
  assert result['top1_agreement'] >= 0.9


def test_pushed_tflite_benchmark_measures_every_pushed_file(first_run):
  from benchmarks import pushed_tflite  # pylint: disable=g-import-not-at-top
  _, run = first_run
  results = pushed_tflite.benchmark(run.pushed_model, images=6, rounds=2,
                                    warmup=1)
  files = results['files']
  assert set(files) == {'float32', 'float16', 'int8'}
  with open(os.path.join(run.pushed_model, 'manifest.json')) as f:
    manifest = json.load(f)
  for fmt in configs.TFLITE_FORMATS:
    assert files[fmt]['bytes'] == manifest['files'][
        tflite.file_name(fmt)]['bytes']
    assert files[fmt]['top1_agreement_interval'] == manifest['parity'][
        'formats'][fmt]['top1_agreement_interval']
    assert files[fmt]['latency_1_thread']['median_ms'] > 0
  assert files['int8']['bytes_vs_float32'] < files['float16'][
      'bytes_vs_float32'] < 1
  table = pushed_tflite.render_markdown([{**results, 'label': 'demo'}])
  assert '| int8 |' in table and '| float32 |' in table


def test_gates_on_split_reproduces_the_run_s_gates(first_run):
  """benchmarks/gates_on_split.py (the gates of a run, on any split), on
  the test split of the run's own model: the IntervalGate's report."""
  from benchmarks import gates_on_split  # pylint: disable=g-import-not-at-top
  settings, run = first_run
  report = gates_on_split.gates_on_split(run.pushed_model, run.examples_uri,
                                         configs.TEST_SPLIT, settings)
  expected = [g for g in run.gate_report['gates'] if 'slice_family' in g]
  assert [g['slice_family'] for g in report['subgroup_gates']] == [
      g['slice_family'] for g in expected]
  for got, want in zip(report['subgroup_gates'], expected):
    assert got['passed'] == want['passed']
    assert set(got['groups']) == set(want['groups'])
    for group, entry in want['groups'].items():
      for bound in ('value', 'lower', 'upper'):
        assert got['groups'][group]['difference'][bound] == pytest.approx(
            entry['difference'][bound], abs=1e-9), (group, bound)
  assert report['overall']['metrics']['balanced_accuracy'][
      'value'] == pytest.approx(
          run.intervals['overall']['metrics']['balanced_accuracy']['value'],
          abs=1e-9)


def _report_numbers(run):
  with open(os.path.join(os.path.dirname(run.report),
                         run_report.DATA_FILE)) as f:
    return json.load(f)


def test_run_produced_the_report_and_model_card(first_run):
  _, run = first_run
  assert run.report and os.path.basename(run.report) == run_report.REPORT_FILE
  assert run.model_card and os.path.exists(run.model_card)
  assert os.path.exists(os.path.join(os.path.dirname(run.model_card),
                                     run_report.MODEL_CARD_HTML))
  assert f'Run report:        {run.report}' in run.format()
  numbers = _report_numbers(run)
  assert numbers['blessing']['blessed'] is True
  assert numbers['pushed']['pushed'] is True
  assert numbers['pushed']['destination'] == run.pushed_model
  assert set(numbers['pushed']['files']) == set(
      release.read_json(run.manifest)['files'])
  # The report's numbers are TFMA's, as the summary reads them.
  overall = dict(numbers['evaluation']['overall'])
  assert overall['balanced_accuracy'] == pytest.approx(
      run.metrics['balanced_accuracy'])
  assert numbers['explanations']['note'] is None  # Grad-CAM from the model.
  with open(run.model_card) as f:
    card = f.read()
  assert 'not a diagnosis' in card
  assert os.path.basename(run.pushed_model) in card


def test_report_renders_in_headless_chromium(first_run, tmp_path):
  _, run = first_run
  ba = run.intervals['overall']['metrics']['balanced_accuracy']
  images = open_in_headless_chromium(
      run.report, run_report.SECTIONS, tmp_path / 'e2e_report.png',
      expect_text={'evaluation': ['95% intervals',
                                  intervals_lib.text(ba)],
                   'blessing': ['Subgroup and regression gates']})
  assert images['data'] == 4  # The DataReport's charts.
  assert images['training'] == 2 and images['explanations'] == 1
  assert images['evaluation'] >= 3


def test_impossible_gate_blocks_the_push_via_tfx_cli(first_run, tmp_path):
  settings, run = first_run
  versions_before = sorted(os.listdir(settings.serving_model_dir))
  strict = _settings(settings.data_root, settings.home,
                     min_balanced_accuracy=1.01, min_melanoma_recall=1.01)
  env = dict(os.environ, **strict.to_env(), HOME=str(tmp_path))
  tfx_cli = os.path.join(os.path.dirname(sys.executable), 'tfx')
  runner = os.path.join(configs.PROJECT_ROOT, 'pipeline', 'local_runner.py')
  subprocess.run([tfx_cli, 'pipeline', 'create', '--engine', 'local',
                  '--pipeline_path', runner], env=env, check=True,
                 capture_output=True)
  subprocess.run([tfx_cli, 'run', 'create', '--engine', 'local',
                  '--pipeline_name', strict.pipeline_name], env=env,
                 check=True, capture_output=True)
  second = summary.latest_run(strict)
  assert second.run_id != run.run_id
  states = {c.node_id: c.state for c in second.components}
  # Unchanged data and code: everything up to the Trainer comes from cache.
  for node in ('ImageExampleGen', 'StatisticsGen', 'Trainer'):
    assert states[node] == 'CACHED', states
  assert second.blessed is False
  assert any(f.startswith('balanced_accuracy =') and '1.0100' in f
             for f in second.failed_thresholds), second.failed_thresholds
  assert any(f.startswith('melanoma_recall [classId:4 mel]') and '1.0100' in f
             and 'misses by' in f for f in second.failed_thresholds)
  # Both TFMA thresholds failed, each recorded with its numbers; the
  # IntervalGate's gates (same model, no other blessed model as baseline)
  # passed, and the push is refused all the same.
  assert second.evaluator_blessed is False and second.gate_blessed is True
  text = second.format()
  assert 'FAILED: melanoma_recall' in text
  assert 'regression    passed: no blessed baseline model' in text
  assert second.pushed_model is None and second.pushed_tflite == []
  assert second.mobile_verdicts is None
  assert 'model not blessed' in second.mobile_note
  assert sorted(os.listdir(settings.serving_model_dir)) == versions_before
  # The report still ran, and says why nothing was pushed.
  assert states['RunReporter'] == 'COMPLETE'
  assert second.report != run.report
  numbers = _report_numbers(second)
  assert numbers['blessing']['blessed'] is False
  assert any('balanced_accuracy' in f and '1.01' in f
             for f in numbers['blessing']['failures'])
  assert numbers['pushed']['pushed'] is False
  assert 'not blessed' in numbers['pushed']['reason']
  with open(second.model_card) as f:
    assert 'NOT blessed' in f.read()


def test_predict_isic_csv_from_the_pushed_model(first_run, tmp_path):
  settings, run = first_run
  jpegs, _ = _test_jpegs(run, str(tmp_path))
  out = str(tmp_path / 'preds.csv')
  assert cli.main(['predict', '--model', settings.serving_model_dir,
                   '--images', str(tmp_path), '--out', out,
                   '--format', 'isic', '--tflite']) == 0
  with open(out) as f:
    lines = f.read().splitlines()
  assert lines[0] == 'image,MEL,NV,BCC,AKIEC,BKL,DF,VASC'
  assert len(lines) == len(jpegs) + 1
  assert all(abs(sum(map(float, line.split(',')[1:])) - 1) < 0.02
             for line in lines[1:])


def test_try_it_page_on_the_pushed_version(first_run, tmp_path):
  """`skinlesion serve`'s page for the version this run pushed: the gates
  and values the manifest recorded, and the top-3 of a test image as
  `predict` gives them (tests/pipeline/test_serve.py drives the server)."""
  from pipeline import predict  # pylint: disable=g-import-not-at-top
  from pipeline import serve  # pylint: disable=g-import-not-at-top
  settings, run = first_run
  app = serve.TryIt(predict.PushedModel(settings.serving_model_dir))
  manifest = release.read_json(run.manifest)
  jpegs, _ = _test_jpegs(run, str(tmp_path), count=1)
  with open(jpegs[0], 'rb') as f:
    analysis = app.analyse(f.read(), '000.jpg')
  html = serve.render_page(app, analysis).decode()
  assert f'id="model-version">{manifest["model_version"]}<' in html
  for gate in manifest['blessing']['gates']:
    assert f'<td class="l">{gate["metric"]}</td>' in html
    assert f'{gate["value"]:.4f}' in html
  assert 'subgroup gate across sex' in html
  assert 'regression gate vs the latest blessed model' in html
  assert 'id="gradcam"' in html and 'not a diagnosis' in html
  expected = predict.predict(settings.serving_model_dir, jpegs)
  row = expected.probabilities[0]
  assert [label for label, _, _ in analysis.top] == [
      expected.labels[i] for i in np.argsort(-row, kind='stable')[:3]]
  np.testing.assert_allclose([p for _, _, p in analysis.top],
                             np.sort(row)[::-1][:3], atol=1e-7)
