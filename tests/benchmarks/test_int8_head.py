"""benchmarks/int8_head.py on a tiny mixed_input model: the shipped design
keeps every dense layer float, the other variant only the output layer, and
the report says what that moves (bytes by type, ratios, parity)."""

import json
import os

import numpy as np
import pytest

from benchmarks import int8_head
from tests.conftest import train_tiny

SIZE = 32


@pytest.fixture(scope='module')
def report(tiny_tfrecords, tmp_path_factory):
  out = tmp_path_factory.mktemp('int8_head')
  fn_args, _ = train_tiny(tiny_tfrecords, out / 'model', model='mixed_input',
                          backbone='cnn_baseline', width=0.25, image_size=SIZE)
  path = str(out / 'report.json')
  assert int8_head.main([
      '--saved-model', fn_args.serving_model_dir,
      '--examples', os.path.dirname(os.path.dirname(tiny_tfrecords[0])),
      '--image-size', str(SIZE), '--split', 'eval', '--calibration', '16',
      '--latency-images', '20', '--out', path]) == 0
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def test_only_the_output_layer_stays_float(report):
  variants = report['variants']
  assert set(variants) == {'float32', 'int8_float_head', 'int8_float_output'}
  head = variants['int8_float_head']['constant_bytes']
  output = variants['int8_float_output']['constant_bytes']
  # The hidden dense layers (mixed_input's metadata_dense1/2 and dense) move
  # from float32 to int8 constants; the output layer's float weights stay.
  assert 0 < output['FLOAT32'] < head['FLOAT32']
  assert output['INT8'] > head['INT8']
  moved = head['FLOAT32'] - output['FLOAT32']
  assert moved == pytest.approx(4 * (output['INT8'] - head['INT8']), rel=0.05)
  assert (variants['int8_float_output']['bytes'] <
          variants['int8_float_head']['bytes'] < variants['float32']['bytes'])


def test_ratios_and_parity_are_reported(report):
  assert report['metadata_input'] is True
  assert report['split'] == 'eval' and report['images'] > 0
  for name, row in report['variants'].items():
    assert row['bytes_x_float32'] == pytest.approx(
        row['bytes'] / report['variants']['float32']['bytes'])
    assert row['latency_ms']['median_ms'] > 0
    if name == 'float32':
      assert row['bytes_x_float32'] == 1.0
      continue
    agreement = row['top1_agreement']
    assert 0.0 <= agreement['lower'] <= agreement['value'] <= agreement['upper'] <= 1.0
    assert np.isfinite(row['balanced_accuracy_drop']['value'])
