"""MobileExporter and MobilePusher executors on real artifacts.

The model is the session's trained model, the examples its TFRecords laid out
as ExampleGen's splits; nothing is faked except, in one test, the deliberate
breakage the parity gate must catch: int8 calibrated on constant grey images.
"""

import errno
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
from tfx import types
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts

from components import mobile_exporter
from components import mobile_pusher
from models import features
from mobile_export import release
from mobile_export import tflite
from pipeline import configs
from pipeline import summary
from tests.conftest import TINY_IMAGE_SIZE


@pytest.fixture(scope='module')
def inputs(trained_model, tiny_tfrecords, tmp_path_factory):
  root = tmp_path_factory.mktemp('artifacts')
  model = standard_artifacts.Model()
  model.uri = str(root / 'model')
  shutil.copytree(trained_model.serving_model_dir,
                  os.path.join(model.uri, 'Format-Serving'))
  examples = standard_artifacts.Examples()
  examples.uri = str(root / 'examples')
  examples.split_names = json.dumps(['train', 'test'])
  for split, path in (('train', tiny_tfrecords[0]),
                      ('test', tiny_tfrecords[1])):
    os.makedirs(os.path.join(examples.uri, f'Split-{split}'))
    shutil.copy(path, os.path.join(examples.uri, f'Split-{split}', 'data.gz'))
  return model, examples


def _blessing(blessed):
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property('blessed', int(blessed))
  return blessing


def _exporter_properties():
  settings = configs.Settings()
  component = mobile_exporter.MobileExporter(
      model=types.Channel(type=standard_artifacts.Model),
      model_blessing=types.Channel(type=standard_artifacts.ModelBlessing),
      examples=types.Channel(type=standard_artifacts.Examples),
      labels=list(configs.LABELS),
      label_descriptions=[configs.LABEL_DISPLAY_NAMES[n]
                          for n in configs.LABELS],
      image_size=TINY_IMAGE_SIZE, formats=list(configs.TFLITE_FORMATS),
      representative_split='train', representative_examples=50, seed=1,
      parity_split='test',
      min_top1_agreement=settings.tflite_min_top1_agreement,
      max_balanced_accuracy_drop=settings.tflite_max_balanced_accuracy_drop,
      model_name='test-model', author='a', licenses='l')
  return dict(component.exec_properties)


def _one_class_copy(saved_model_dir: str, out_dir: str, k: int) -> str:
  """The SavedModel's serving_images turned into a model that (almost)
  always answers class k: one-hot(k) plus a thousandth of the network's
  probabilities (so the output still depends on the image), renormalized."""
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures[features.IMAGE_SIGNATURE]
  spec = signature.structured_input_signature[1]['images']

  class OneClass(tf.Module):

    def __init__(self):
      super().__init__()
      self.inner = loaded

    @tf.function(input_signature=[
        tf.TensorSpec(spec.shape, spec.dtype, name='images')])
    def serve(self, images):
      probabilities = self.inner.signatures[features.IMAGE_SIGNATURE](
          images=images)[features.PREDICTION_KEY]
      scores = tf.one_hot(tf.fill(tf.shape(probabilities)[:1], k),
                          tf.shape(probabilities)[1]) + 1e-3 * probabilities
      return {features.PREDICTION_KEY:
              scores / tf.reduce_sum(scores, axis=1, keepdims=True)}

  module = OneClass()
  tf.saved_model.save(module, out_dir,
                      signatures={features.IMAGE_SIGNATURE: module.serve})
  return out_dir


class ConstantCalibrationExecutor(mobile_exporter.Executor):
  """A deliberately broken int8 file: converted from a model that answers
  the class the SavedModel predicts least often on the parity split, so at
  most 1/K of its top-1 answers can agree.  (Calibrating on constant
  images no longer broke the tiny, near-uniform test model's int8 file once
  the head stayed float.)"""

  def _export_one(self, fmt, saved_model_dir, *args):
    if fmt == 'int8':
      reference = args[-2]  # The SavedModel's probabilities on that split.
      counts = np.bincount(np.argmax(reference, axis=1),
                           minlength=reference.shape[1])
      saved_model_dir = _one_class_copy(
          saved_model_dir, tempfile.mkdtemp(prefix='one_class_'),
          int(np.argmin(counts)))
    return super()._export_one(fmt, saved_model_dir, *args)


def _export(executor_class, model, examples, blessing, uri):
  output = mobile_exporter.MobileModels()
  output.uri = uri
  os.makedirs(uri)
  executor_class().Do({'model': [model], 'model_blessing': [blessing],
                       'examples': [examples]},
                      {'mobile_models': [output]}, _exporter_properties())
  return output


def _push(model, blessing, mobile, uri, base_directory):
  pushed = standard_artifacts.PushedModel()
  pushed.uri = uri
  mobile_pusher.Executor().Do(
      {'model': [model], 'model_blessing': [blessing],
       'mobile_models': [mobile]},
      {'pushed_model': [pushed]}, {'base_directory': base_directory})
  return pushed


def test_parity_gate_refuses_a_broken_int8_and_the_push_goes_on_without_it(
    inputs, tmp_path):
  model, examples = inputs
  blessing = _blessing(True)
  mobile = _export(ConstantCalibrationExecutor, model, examples, blessing,
                   str(tmp_path / 'mobile'))
  assert mobile.get_int_custom_property('exported') == 1
  assert json.loads(mobile.get_string_custom_property('passed_formats')) == [
      'float16']
  assert json.loads(mobile.get_string_custom_property('failed_formats')) == [
      'int8']
  report = release.read_json(os.path.join(mobile.uri,
                                          mobile_exporter.REPORT_FILE))
  int8 = report['formats']['int8']
  assert not int8['passed']
  assert int8['parity']['top1_agreement'] < 0.98
  assert any(r.startswith('top-1 agreement') for r in int8['reasons'])
  assert report['formats']['float16']['parity']['top1_agreement'] >= 0.98
  # The broken file is kept in the exporter's artifact, for inspection.
  assert os.path.exists(os.path.join(mobile.uri, 'model_int8.tflite'))

  # The run summary says why (it reads these properties from MLMD).
  verdicts, note = summary.mobile_verdicts(mobile.mlmd_artifact)
  text = '\n'.join(summary.format_mobile_verdicts(verdicts, note))
  assert 'int8     FAILED, not pushed' in text
  assert 'why: top-1 agreement with the SavedModel' in text
  assert 'float16  PASSED' in text

  base = str(tmp_path / 'serving')
  pushed = _push(model, blessing, mobile, str(tmp_path / 'pushed'), base)
  version = report['model_version']
  destination = os.path.join(base, version)
  assert pushed.get_int_custom_property('pushed') == 1
  assert pushed.get_string_custom_property('pushed_version') == version
  assert pushed.get_string_custom_property(
      'pushed_destination') == destination
  assert json.loads(pushed.get_string_custom_property('pushed_tflite')) == [
      'model_float16.tflite']
  assert os.listdir(base) == [version]
  assert sorted(os.listdir(destination)) == sorted(
      ['saved_model.pb', 'variables', 'assets', 'fingerprint.pb',
       'calibration.json', 'model_float16.tflite', 'labels.txt',
       'manifest.json'])
  with open(os.path.join(destination, 'labels.txt')) as f:
    assert f.read().split() == list(configs.LABELS)

  manifest = release.read_json(os.path.join(destination, 'manifest.json'))
  assert manifest['model_version'] == version
  # Every file but the manifest, with its real sha256.
  on_disk = release.file_inventory(destination)
  assert manifest['files'] == on_disk
  assert 'model_int8.tflite' not in manifest['files']
  assert manifest['parity']['formats']['int8']['pushed'] is False
  assert manifest['parity']['formats']['int8']['reasons'] == int8['reasons']
  assert manifest['parity']['formats']['float16']['pushed'] is True
  assert manifest['inputs']['model_float16.tflite']['dtype'] == 'float32'
  assert manifest['metrics']['saved_model']['examples'] == report[
      'reference']['examples'] > 0
  # The metadata's version is the directory's.
  with open(os.path.join(destination, 'model_float16.tflite'), 'rb') as f:
    assert tflite.read_metadata(f.read())['version'] == version
  # The PushedModel artifact archives the same version.
  assert release.file_inventory(pushed.uri) == release.file_inventory(
      destination)


def test_not_blessed_exports_and_pushes_nothing(inputs, tmp_path):
  model, examples = inputs
  blessing = _blessing(False)
  mobile = _export(mobile_exporter.Executor, model, examples, blessing,
                   str(tmp_path / 'mobile'))
  assert mobile.get_int_custom_property('exported') == 0
  assert os.listdir(mobile.uri) == []
  verdicts, note = summary.mobile_verdicts(mobile.mlmd_artifact)
  assert verdicts is None and 'model not blessed' in note
  base = str(tmp_path / 'serving')
  pushed = _push(model, blessing, mobile, str(tmp_path / 'pushed'), base)
  assert pushed.get_int_custom_property('pushed') == 0
  assert not os.path.exists(base)


def test_component_refuses_unknown_formats_and_bad_thresholds():
  properties = _exporter_properties()
  assert json.loads(properties['formats']) == ['float16', 'int8']
  channels = dict(
      model=types.Channel(type=standard_artifacts.Model),
      model_blessing=types.Channel(type=standard_artifacts.ModelBlessing),
      examples=types.Channel(type=standard_artifacts.Examples),
      labels=['a', 'b'], label_descriptions=['a', 'b'], image_size=32,
      representative_split='train', representative_examples=10, seed=0,
      parity_split='test', model_name='m')
  with pytest.raises(ValueError, match='unknown TFLite format'):
    mobile_exporter.MobileExporter(formats=['int4'], min_top1_agreement=0.9,
                                   max_balanced_accuracy_drop=0.01,
                                   **channels)
  with pytest.raises(ValueError, match='min_top1_agreement'):
    mobile_exporter.MobileExporter(formats=['int8'], min_top1_agreement=98,
                                   max_balanced_accuracy_drop=0.01,
                                   **channels)


# --- Never ship a bad model; atomic pushes under injected faults. ----------


@pytest.fixture(scope='module')
def candidates(inputs, tmp_path_factory):
  """Two blessed candidates (two model artifacts, two exports, versions)."""
  model, examples = inputs
  root = tmp_path_factory.mktemp('candidates')
  out = []
  for name in ('a', 'b'):
    other = standard_artifacts.Model()
    other.uri = str(root / f'model_{name}')
    shutil.copytree(model.uri, other.uri)
    if out:  # Versions are UNIX seconds: the second must be later.
      while str(int(time.time())) == _version(out[-1][1]):
        time.sleep(0.1)
    mobile = _export(mobile_exporter.Executor, other, examples,
                     _blessing(True), str(root / f'mobile_{name}'))
    assert mobile.get_int_custom_property('exported') == 1
    out.append((other, mobile))
  return out


def _version(mobile):
  return mobile.get_string_custom_property('model_version')


def _intact(base, version):
  """The version's files are exactly those its manifest lists."""
  destination = os.path.join(base, version)
  manifest = release.read_json(os.path.join(destination, 'manifest.json'))
  assert manifest['files'] == release.file_inventory(destination)
  with open(os.path.join(destination, 'labels.txt')) as f:
    assert f.read().split() == list(configs.LABELS)
  return manifest


def test_an_unblessed_model_is_never_pushed_whatever_else_succeeded(
    candidates, tmp_path):
  (model, mobile), _ = candidates  # Its .tflite files passed parity.
  base = str(tmp_path / 'serving')
  pushed = _push(model, _blessing(False), mobile, str(tmp_path / 'p'), base)
  assert pushed.get_int_custom_property('pushed') == 0
  assert pushed.get_string_custom_property(
      mobile_pusher.NOT_PUSHED_REASON) == 'model not blessed'
  assert not os.path.exists(base)


def test_a_tflite_changed_after_its_parity_check_stops_the_push(
    candidates, tmp_path):
  (model, mobile), _ = candidates
  tampered = mobile_exporter.MobileModels()
  tampered.uri = str(tmp_path / 'mobile')
  shutil.copytree(mobile.uri, tampered.uri)
  with open(os.path.join(tampered.uri, 'model_float16.tflite'), 'r+b') as f:
    f.seek(100)
    f.write(b'\x00\x01\x02')
  base = str(tmp_path / 'serving')
  with pytest.raises(IOError, match='sha256 differs'):
    _push(model, _blessing(True), tampered, str(tmp_path / 'p'), base)
  assert os.listdir(base) == []  # Not even a staging directory.


def test_the_same_model_is_not_pushed_twice(candidates, tmp_path):
  (model, mobile), _ = candidates
  base = str(tmp_path / 'serving')
  _push(model, _blessing(True), mobile, str(tmp_path / 'p1'), base)
  # Re-exported under a new version (what a rerun that re-evaluated the same
  # model would do): still the version already pushed.
  again = mobile_exporter.MobileModels()
  again.uri = str(tmp_path / 'mobile_again')
  shutil.copytree(mobile.uri, again.uri)
  report_path = os.path.join(again.uri, mobile_exporter.REPORT_FILE)
  report = release.read_json(report_path)
  report['model_version'] = str(int(report['model_version']) + 60)
  release.write_json(report_path, report)
  pushed = _push(model, _blessing(True), again, str(tmp_path / 'p2'), base)
  assert pushed.get_int_custom_property('pushed') == 0
  assert pushed.get_string_custom_property(
      mobile_pusher.NOT_PUSHED_REASON) == (
          f'already pushed as version {_version(mobile)}')
  assert os.listdir(base) == [_version(mobile)]


def _disk_full_after(calls, predicate=lambda src, dst: True):
  """A fileio.copy that writes half a file then fails with ENOSPC."""
  real = fileio.copy
  count = [0]

  def copy(src, dst, overwrite=False):
    if predicate(src, dst):
      count[0] += 1
      if count[0] == calls:
        with open(src, 'rb') as f:
          data = f.read()
        with open(dst, 'wb') as f:
          f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
    return real(src, dst, overwrite=overwrite)
  return copy


def _half_written_json(path, value):
  with open(path, 'w') as f:
    f.write(json.dumps(value)[:100])
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _interrupt(*args, **kwargs):
  raise KeyboardInterrupt()


FAULTS = {
    # Where the push fails: (module, attribute, replacement factory).
    'disk full in the first SavedModel file': (
        fileio, 'copy', lambda: _disk_full_after(1)),
    'disk full in the variables': (
        fileio, 'copy', lambda: _disk_full_after(
            1, lambda src, dst: 'variables' in src)),
    'disk full in a .tflite file': (
        fileio, 'copy', lambda: _disk_full_after(
            1, lambda src, dst: src.endswith('.tflite'))),
    'disk full writing the manifest': (
        release, 'write_json', lambda: _half_written_json),
    'disk full archiving into the artifact': (
        fileio, 'copy', lambda: _disk_full_after(
            3, lambda src, dst: os.sep + 'p' + os.sep in dst)),
    'an exception hashing the files': (
        release, 'file_inventory', lambda: _interrupt),
    'the final rename fails': (
        tf.io.gfile, 'rename', lambda: lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.EIO, 'I/O error'))),
}


@pytest.mark.parametrize('fault', sorted(FAULTS))
def test_a_push_failing_anywhere_leaves_the_previous_version_intact(
    candidates, tmp_path, monkeypatch, fault):
  (model_a, mobile_a), (model_b, mobile_b) = candidates
  base = str(tmp_path / 'serving')
  _push(model_a, _blessing(True), mobile_a, str(tmp_path / 'pa'), base)
  before = _intact(base, _version(mobile_a))

  module, name, replacement = FAULTS[fault]
  monkeypatch.setattr(module, name, replacement())
  with pytest.raises((OSError, KeyboardInterrupt)):
    _push(model_b, _blessing(True), mobile_b, str(tmp_path / 'p'), base)
  monkeypatch.undo()

  # The previous version is untouched and no other entry is visible.
  assert os.listdir(base) == [_version(mobile_a)]
  assert _intact(base, _version(mobile_a)) == before
  # Retried without the fault, the push completes.
  pushed = _push(model_b, _blessing(True), mobile_b, str(tmp_path / 'p2'),
                 base)
  assert pushed.get_int_custom_property('pushed') == 1
  assert sorted(os.listdir(base)) == sorted([_version(mobile_a),
                                             _version(mobile_b)])
  _intact(base, _version(mobile_b))


def test_a_model_with_metadata_inputs_is_converted_gated_and_pushed(
    inputs, tmp_path):
  from models import export  # pylint: disable=g-import-not-at-top
  from models import metadata_vector  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  _, examples = inputs
  # mixed_input (untrained: parity compares it with itself).
  model = standard_artifacts.Model()
  model.uri = str(tmp_path / 'model')
  export.export_serving_model(
      registry.build('mixed_input', num_classes=len(configs.LABELS),
                     image_size=TINY_IMAGE_SIZE, backbone='cnn_baseline',
                     width=0.25),
      os.path.join(model.uri, 'Format-Serving'), TINY_IMAGE_SIZE,
      with_metadata=True)
  blessing = _blessing(True)
  mobile = _export(mobile_exporter.Executor, model, examples, blessing,
                   str(tmp_path / 'mobile'))
  with open(os.path.join(mobile.uri, mobile_exporter.REPORT_FILE)) as f:
    report = json.load(f)
  for fmt in configs.TFLITE_FORMATS:
    entry = report['formats'][fmt]
    assert entry['file'] == tflite.file_name(fmt), entry['reasons']
    assert entry['parity']['examples'] == report['reference']['examples'] > 0
    vector_input = entry['input'][features.METADATA_VECTOR_KEY]
    assert vector_input['shape'] == [1, metadata_vector.SIZE]
    assert vector_input['dtype'] == 'float32'
  # Beside them, an image-only file of each format (one uint8 / float32
  # image input), judged against the SavedModel with metadata missing.
  for fmt in configs.TFLITE_FORMATS:
    entry = report['formats'][tflite.image_only(fmt)]
    assert entry['file'] == f'model_image_only_{fmt}.tflite', entry['reasons']
    assert features.METADATA_VECTOR_KEY not in entry['input']
    assert entry['parity']['examples'] == report['reference']['examples']
  assert report['reference_image_only']['examples'] == report['reference'][
      'examples']
  # The float16 files compute what the SavedModel does: they must pass.
  for fmt in ('float16', 'image_only_float16'):
    assert report['formats'][fmt]['passed']
    assert report['formats'][fmt]['parity'][
        'max_probability_difference'] < 1e-3
  passed = json.loads(mobile.get_string_custom_property('passed_formats'))
  assert {'float16', 'image_only_float16'} <= set(passed)
  base = str(tmp_path / 'serving')
  pushed = _push(model, blessing, mobile, str(tmp_path / 'pushed'), base)
  assert pushed.get_int_custom_property('pushed') == 1
  (version,) = os.listdir(base)
  files = os.listdir(os.path.join(base, version))
  assert 'saved_model.pb' in files
  assert sorted(f for f in files if f.endswith('.tflite')) == sorted(
      tflite.file_name(fmt) for fmt in passed)
  with open(os.path.join(base, version, 'manifest.json')) as f:
    manifest = json.load(f)
  assert manifest['metrics']['saved_model_image_only'] == report[
      'reference_image_only']
  assert manifest['parity']['formats']['image_only_float16']['pushed']
  # `skinlesion predict --tflite image_only_float16` runs it on images alone.
  from pipeline import predict  # pylint: disable=g-import-not-at-top
  pushed_model = predict.PushedModel(os.path.join(base, version),
                                     'image_only_float16')
  assert pushed_model.metadata_keys == ()
  assert pushed_model.file == 'model_image_only_float16.tflite'
  # benchmarks/pushed_tflite.py measures each pushed file against the
  # float32 conversion of the signature it came from.
  from benchmarks import pushed_tflite  # pylint: disable=g-import-not-at-top
  measured = pushed_tflite.benchmark(os.path.join(base, version), images=4,
                                     rounds=2, warmup=1)['files']
  assert set(measured) == {'float32', 'image_only_float32'} | set(passed)
  for fmt in passed:
    assert measured[fmt]['bytes'] == os.path.getsize(
        os.path.join(base, version, tflite.file_name(fmt)))
    assert measured[fmt]['top1_agreement'] == manifest['parity']['formats'][
        fmt]['top1_agreement']
  # float16 weights: about half the float32 file of the same signature.
  for fmt in ('float16', 'image_only_float16'):
    assert 0.4 < measured[fmt]['bytes_vs_float32'] < 0.8, measured[fmt]


def test_a_metadata_model_exported_before_the_image_only_signature(
    inputs, tmp_path):
  """Its two-input files are converted and pushed as before; its image-only
  entries fail with the reason (re-export), nothing crashes."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  from models import export  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  _, examples = inputs
  model = standard_artifacts.Model()
  model.uri = str(tmp_path / 'model')
  serving = os.path.join(model.uri, 'Format-Serving')
  export.export_serving_model(
      registry.build('mixed_input', num_classes=len(configs.LABELS),
                     image_size=TINY_IMAGE_SIZE, backbone='cnn_baseline',
                     width=0.25), serving, TINY_IMAGE_SIZE, with_metadata=True)
  # The signatures as an export before 2841a7d wrote them.
  proto = saved_model_pb2.SavedModel()
  path = os.path.join(serving, 'saved_model.pb')
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  del proto.meta_graphs[0].signature_def[features.IMAGE_ONLY_SIGNATURE]
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  mobile = _export(mobile_exporter.Executor, model, examples,
                   _blessing(True), str(tmp_path / 'mobile'))
  with open(os.path.join(mobile.uri, mobile_exporter.REPORT_FILE)) as f:
    report = json.load(f)
  assert report['formats']['float16']['passed']
  assert 'reference_image_only' not in report
  for fmt in configs.TFLITE_FORMATS:
    entry = report['formats'][tflite.image_only(fmt)]
    assert entry['file'] is None and not entry['passed']
    assert features.IMAGE_ONLY_SIGNATURE in entry['reasons'][0]
