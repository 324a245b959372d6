"""MobileExporter and MobilePusher executors on real artifacts.

The model is the session's trained model, the examples its TFRecords laid out
as ExampleGen's splits; nothing is faked except, in one test, the deliberate
breakage the parity gate must catch: int8 calibrated on constant grey images.
"""

import json
import os
import shutil

import numpy as np
import pytest
from tfx import types
from tfx.types import standard_artifacts

from components import mobile_exporter
from components import mobile_pusher
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


class ConstantCalibrationExecutor(mobile_exporter.Executor):
  """A deliberately broken int8 conversion: calibrated on constant grey."""

  def representative_images(self, examples, split, image_size, count, seed):
    return [np.full((image_size, image_size, 3), 0.5, np.float32)] * count


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
       'model_float16.tflite', 'labels.txt', 'manifest.json'])
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


def test_a_model_with_metadata_inputs_is_pushed_without_tflite(inputs,
                                                                tmp_path):
  from models import export  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  _, examples = inputs
  # mixed_input (untrained: the exporter's decision does not depend on it).
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
  assert json.loads(mobile.get_string_custom_property('passed_formats')) == []
  assert os.listdir(mobile.uri) == [mobile_exporter.REPORT_FILE]
  verdicts = json.loads(mobile.get_string_custom_property('verdicts'))
  assert set(verdicts) == set(configs.TFLITE_FORMATS)
  assert all('metadata inputs' in v['reasons'][0] for v in verdicts.values())
  base = str(tmp_path / 'serving')
  pushed = _push(model, blessing, mobile, str(tmp_path / 'pushed'), base)
  assert pushed.get_int_custom_property('pushed') == 1
  (version,) = os.listdir(base)
  files = os.listdir(os.path.join(base, version))
  assert 'saved_model.pb' in files
  assert not [f for f in files if f.endswith('.tflite')]
