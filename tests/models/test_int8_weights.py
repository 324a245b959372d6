"""models/int8_weights.py and the Trainer's int8_weights phase.

The claim the phase rests on: after it, the int8 .tflite's convolution
weights (batch norm folded in by the converter, then quantized per channel)
are the SavedModel's own, so the file differs from the SavedModel only by
its activations.  The end-to-end test reads both out of the converted files.
"""

import numpy as np
import pytest
import tensorflow as tf

from mobile_export import tflite
from models import int8_weights
from models import trainer
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import train_tiny


def test_per_channel_rounding_keeps_each_channel_maximum_and_127_steps():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  kernel[..., 2] = 0.0  # a dead channel stays zero
  rounded = int8_weights.per_channel_int8(kernel, depthwise=False)
  flat, original = rounded.reshape(-1, 5), kernel.reshape(-1, 5)
  np.testing.assert_allclose(np.abs(flat).max(0), np.abs(original).max(0),
                             rtol=1e-6)
  scale = np.abs(original).max(0) / 127
  scale[2] = 1.0
  steps = flat / scale
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  assert np.abs(steps).max() <= 127 + 1e-3
  # Rounding error at most half a step.
  assert np.all(np.abs(flat - original) <= scale / 2 + 1e-7)
  assert int8_weights.on_int8_grid(rounded, depthwise=False)
  assert not int8_weights.on_int8_grid(kernel, depthwise=False)
  # Idempotent.
  np.testing.assert_array_equal(
      int8_weights.per_channel_int8(rounded, depthwise=False), rounded)


def test_depthwise_channels_are_input_times_multiplier():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
  # Channel (input 1, multiplier 0) much larger: per-channel scales keep the
  # others fine; one scale per input channel (ignoring the multiplier)
  # would not.
  kernel[:, :, 1, 0] *= 100
  rounded = int8_weights.per_channel_int8(kernel, depthwise=True)
  assert int8_weights.on_int8_grid(rounded, depthwise=True)
  small = np.abs(kernel[:, :, 0, 1]).max() / 127
  assert np.abs(rounded[:, :, 0, 1] - kernel[:, :, 0, 1]).max() <= small / 2


def test_a_per_channel_factor_keeps_the_kernel_on_its_grid():
  # What batch-norm folding does to a rounded kernel: scale each output
  # channel (sign included).  The grid moves with the channel's maximum.
  rng = np.random.default_rng(2)
  rounded = int8_weights.per_channel_int8(
      rng.normal(size=(3, 3, 3, 6)).astype(np.float32), depthwise=False)
  folded = rounded * rng.uniform(-3, 3, size=6).astype(np.float32)
  assert int8_weights.on_int8_grid(folded, depthwise=False)
  depthwise = int8_weights.per_channel_int8(
      rng.normal(size=(3, 3, 3, 2)).astype(np.float32), depthwise=True)
  assert int8_weights.on_int8_grid(
      depthwise * rng.uniform(0.1, 3, size=(3, 2)).astype(np.float32),
      depthwise=True)


def test_round_and_freeze_reaches_nested_depthwise_and_plain_convolutions():
  import keras  # pylint: disable=g-import-not-at-top
  inner = keras.Sequential([keras.Input((8, 8, 3)),
                            keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
                            keras.layers.BatchNormalization()], name='inner')
  model = keras.Sequential([keras.Input((8, 8, 3)), inner,
                            keras.layers.Conv2D(4, 1),
                            keras.layers.GlobalAveragePooling2D(),
                            keras.layers.Dense(2)])
  assert not int8_weights.all_on_int8_grid(model)
  assert int8_weights.round_and_freeze(model) == 2
  assert int8_weights.all_on_int8_grid(model)
  assert [layer.trainable for layer in int8_weights.convolutions(model)] == [
      False, False]
  # What stays trainable: batch norm and the Dense head.
  assert {v.path.split('/')[-1] for v in model.trainable_variables} == {
      'gamma', 'beta', 'kernel', 'bias'}
  assert len(model.trainable_variables) == 4


def test_a_model_without_convolutions_is_refused():
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  with pytest.raises(ValueError, match='no Conv2D'):
    int8_weights.round_and_freeze(model)


def _conv_filters(buffer):
  """Each CONV_2D / DEPTHWISE_CONV_2D's filter, as float (dequantized per
  channel for an int8 file), in graph order."""
  interpreter = tf.lite.Interpreter(model_content=buffer)
  interpreter.allocate_tensors()
  details = {d['index']: d for d in interpreter.get_tensor_details()}
  out = []
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    if op['op_name'] not in ('CONV_2D', 'DEPTHWISE_CONV_2D'):
      continue
    detail = details[op['inputs'][1]]
    value = interpreter.get_tensor(op['inputs'][1]).astype(np.float64)
    q = detail['quantization_parameters']
    if detail['dtype'] == np.int8:
      shape = [1] * value.ndim
      shape[q['quantized_dimension']] = -1
      value = ((value - q['zero_points'].reshape(shape)) *
               q['scales'].reshape(shape))
    out.append(value)
  return out


@pytest.fixture(scope='module')
def rounded_run(tiny_tfrecords, tmp_path_factory):
  out = tmp_path_factory.mktemp('int8_weights')
  return train_tiny(tiny_tfrecords, out, model='cnn_baseline',
                    image_size=TINY_IMAGE_SIZE, int8_weight_epochs=1)


def test_the_phase_runs_last_on_rounded_frozen_convolutions(rounded_run):
  _, history = rounded_run
  phases = history['phases']
  assert [p['phase'] for p in phases] == ['train', trainer.INT8_WEIGHTS_PHASE]
  last = phases[-1]
  assert last['epochs'] == 1 and last['int8_rounded_convolutions'] >= 4
  assert last['trainable_weights'] < phases[0]['trainable_weights']


def test_the_int8_file_has_the_savedmodels_folded_weights(rounded_run,
                                                          tiny_tfrecords,
                                                          tmp_path):
  fn_args, _ = rounded_run
  from mobile_export import data  # pylint: disable=g-import-not-at-top
  images = data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE,
                                      20, seed=0)
  float32 = tflite.converter(fn_args.serving_model_dir).convert()
  int8 = tflite.convert_int8(fn_args.serving_model_dir, images)
  folded, quantized = _conv_filters(float32), _conv_filters(int8)
  assert len(folded) == len(quantized) >= 4
  for f, q in zip(folded, quantized):
    # The converter folds batch norm into the float kernel; the int8 file's
    # dequantized filter is that kernel, not a rounding of it.
    np.testing.assert_allclose(q, f, rtol=1e-4,
                               atol=1e-5 * np.abs(f).max())
  # Without the phase, the same comparison finds the rounding error.
  plain, _ = train_tiny(tiny_tfrecords, tmp_path / 'plain',
                        model='cnn_baseline', image_size=TINY_IMAGE_SIZE)
  p_float = _conv_filters(tflite.converter(plain.serving_model_dir).convert())
  p_int8 = _conv_filters(tflite.convert_int8(plain.serving_model_dir, images))
  assert max(np.abs(q - f).max() / np.abs(f).max()
             for f, q in zip(p_float, p_int8)) > 1e-3
