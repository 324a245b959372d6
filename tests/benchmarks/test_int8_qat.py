"""benchmarks/int8_qat.py: the run's model is rebuilt exactly, and the
Trainer's int8_qat phase runs on it end to end."""

import json
import os

import numpy as np
import pytest

from benchmarks import int8_qat
from mobile_export import data
from mobile_export import parity
from models import trainer
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import train_tiny


@pytest.fixture(scope='module')
def run_layout(tiny_tfrecords, tmp_path_factory):
  """A pipeline root holding one tiny Trainer run and its examples, laid
  out as TFX lays them out."""
  out = tmp_path_factory.mktemp('int8_qat')
  fn_args, _ = train_tiny(tiny_tfrecords, out / 'train', model='cnn_baseline',
                          image_size=TINY_IMAGE_SIZE)
  root = out / 'pipeline'
  os.makedirs(root / 'Trainer' / 'model' / '3')
  os.makedirs(root / 'ImageExampleGen' / 'examples')
  os.symlink(fn_args.serving_model_dir,
             root / 'Trainer' / 'model' / '3' / 'Format-Serving')
  os.makedirs(root / 'Trainer' / 'model_run')
  os.symlink(fn_args.model_run_dir, root / 'Trainer' / 'model_run' / '3')
  os.symlink(os.path.dirname(os.path.dirname(tiny_tfrecords[0])),
             root / 'ImageExampleGen' / 'examples' / '1')
  return root, fn_args


def test_the_rebuilt_model_is_the_savedmodel(run_layout, tiny_tfrecords):
  _, fn_args = run_layout
  with open(os.path.join(fn_args.model_run_dir, trainer.HISTORY_FILE)) as f:
    cfg = json.load(f)['config']
  model = int8_qat.load_trained_model(fn_args.serving_model_dir, cfg, 7)
  pixels, _ = data.load_images([tiny_tfrecords[1]], TINY_IMAGE_SIZE)
  np.testing.assert_allclose(
      model.predict(pixels.astype(np.float32) / 255.0, verbose=0),
      parity.saved_model_predict(fn_args.serving_model_dir, pixels),
      atol=1e-5)
  # Another architecture's variables are refused.
  with pytest.raises(ValueError, match='does not hold this model'):
    int8_qat.load_trained_model(fn_args.serving_model_dir,
                                {**cfg, 'width': 1.0}, 7)


def test_the_phase_runs_and_every_file_is_scored(run_layout, tmp_path):
  root, _ = run_layout
  out = tmp_path / 'qat.json'
  int8_qat.main(['--run', str(root), '--trainer-id', '3', '--examples-id',
                 '1', '--epochs', '1', '--calibration', '10',
                 '--out', str(out)])
  report = json.loads(out.read_text())
  assert set(report['results']) == {'int8_before', 'saved_model_after_vs_before',
                                    'float16_after', 'int8_after'}
  for result in report['results'].values():
    agreement = result['top1_agreement']
    assert agreement['lower'] <= agreement['value'] <= agreement['upper']
  assert report['phase']['int8_rounded_convolutions'] >= 4
  assert len(report['phase']['history']['val_agreement']) == 1
  assert 0 < report['saved_model_before']['balanced_accuracy'] <= 1
  assert report['phase']['consistency'] == 1.0


def test_the_int8_weights_phase_runs_from_the_run_s_last_phase(run_layout,
                                                             tmp_path):
  root, _ = run_layout
  out = tmp_path / 'weights.json'
  int8_qat.main(['--run', str(root), '--trainer-id', '3', '--examples-id',
                 '1', '--epochs', '1', '--phase', 'int8_weights',
                 '--calibration', '10', '--out', str(out)])
  report = json.loads(out.read_text())
  assert report['phase_name'] == 'int8_weights'
  assert report['phase']['phase'] == 'int8_weights'
  assert report['phase']['int8_rounded_convolutions'] >= 4
  # cnn_baseline trains in one phase: its learning rate, not fine-tuning's.
  assert report['learning_rate'] == report['phase']['learning_rate']
  assert len(report['phase']['history']['val_balanced_accuracy']) == 1
  assert set(report['results']) == {'int8_before', 'saved_model_after_vs_before',
                                    'float16_after', 'int8_after'}


def test_the_simulation_is_compared_with_the_file_tensor_by_tensor(
    run_layout, tmp_path):
  """benchmarks/int8_simulation.py on the same run: every simulated int8
  tensor of cnn_baseline is found in the file, and on the first ones
  (before rounding differences accumulate) they are the file's values."""
  from benchmarks import int8_simulation  # pylint: disable=g-import-not-at-top
  root, _ = run_layout
  out = tmp_path / 'simulation.json'
  int8_simulation.main(['--run', str(root), '--trainer-id', '3',
                        '--examples-id', '1', '--calibration', '10',
                        '--tensor-images', '4', '--out', str(out)])
  report = json.loads(out.read_text())
  assert set(report['results']) == {'file_vs_float', 'simulation_vs_float',
                                    'file_vs_simulation'}
  tensors = report['tensors']
  assert len(tensors) >= 5
  assert all('mean_abs_diff_steps' in t for t in tensors), tensors
  # The first conv + BN + ReLU reads the exact input: the same int8 values
  # up to a rare rounding tie.
  assert tensors[0]['mean_abs_diff_steps'] < 0.05, tensors[0]
  assert tensors[0]['mean_abs_steps'] > 1
