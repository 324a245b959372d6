"""models/quantization_aware.py: the paths, their simulation of the int8
file, and the training that makes the int8 file agree with the SavedModel."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from mobile_export import tflite
from models import export
from models import int8_weights
from models import quantization_aware as qa
from models import trainer
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import train_tiny
from tests.models.test_int8_weights import _conv_filters

SIZE = 16


def _model(seed=0):
  """A MobileNetV2-like model: input scaling, a nested backbone with
  conv-BN-ReLU6, a depthwise block, a linear projection and a residual Add,
  then global pooling and a dense softmax head."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((SIZE, SIZE, 3), name='image')
  x = keras.layers.Rescaling(2.0, offset=-1.0, name='backbone_preprocess')(
      inputs)
  b_in = keras.Input((SIZE, SIZE, 3))
  y = keras.layers.Conv2D(8, 3, padding='same', use_bias=False, name='c1')(b_in)
  y = keras.layers.BatchNormalization(name='c1_bn')(y)
  y = keras.layers.ReLU(6.0, name='c1_relu')(y)
  z = keras.layers.ZeroPadding2D(1, name='pad')(y)
  z = keras.layers.DepthwiseConv2D(3, use_bias=False, name='dw')(z)
  z = keras.layers.BatchNormalization(name='dw_bn')(z)
  z = keras.layers.ReLU(6.0, name='dw_relu')(z)
  z = keras.layers.Conv2D(8, 1, use_bias=False, name='project')(z)
  z = keras.layers.BatchNormalization(name='project_bn')(z)
  y = keras.layers.Add(name='add')([y, z])
  backbone = keras.Model(b_in, y, name='backbone')
  x = keras.layers.Identity(name='feature_map')(backbone(x))
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  x = keras.layers.Dropout(0.3, name='head_dropout')(x)
  outputs = keras.layers.Dense(4, activation='softmax', dtype='float32',
                               name='probabilities')(x)
  model = keras.Model(inputs, outputs, name='tiny')
  rng = np.random.default_rng(seed)
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      # Moving statistics of a trained model: folding them matters.
      n = layer.gamma.shape[0]
      layer.moving_mean.assign(rng.normal(0, 0.3, n).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.2, 2, n).astype(np.float32))
      layer.gamma.assign(rng.uniform(0.5, 2, n).astype(np.float32))
      layer.beta.assign(rng.normal(0, 0.5, n).astype(np.float32))
  head = model.get_layer('probabilities')
  head.kernel.assign(head.kernel * 8.0)
  return model


def _images(count, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(count, SIZE, SIZE, 3)).astype(np.uint8)
  # What tflite.calibrate does to its first image: the full pixel range.
  pixels[0, 0, 0, :], pixels[0, -1, -1, :] = 0, 255
  return pixels.astype(np.float32) / 255.0


@pytest.mark.parametrize('float_layers', [qa.FLOAT_LAYERS, ()])
def test_fake_quant_ops_sit_where_the_converter_keeps_int8_tensors(
    float_layers):
  paths = qa.Paths(_model(), float_layers)
  # conv + BN + ReLU6 is one op (its output after the ReLU); the linear
  # projection's is after its BN; padding keeps its input's range; the head
  # stays float.  The input scaling: float, its output quantized once (the
  # default, FLOAT_LAYERS), or the converter's MUL and ADD, each an int8
  # tensor.
  scaling = (['backbone_preprocess_fake_quant'] if float_layers else
             ['backbone_preprocess_mul_fake_quant',
              'backbone_preprocess_fake_quant'])
  assert [f.name for f in paths.fake_quants] == scaling + [
      'c1_relu_fake_quant',
      'dw_relu_fake_quant', 'project_bn_fake_quant', 'add_fake_quant',
      'gap_fake_quant']
  assert len(paths.taps.outputs) == len(scaling) + 5


def test_kernel_rounding_is_the_int8_grid_with_a_straight_through_gradient():
  rng = np.random.default_rng(3)
  kernel = tf.Variable(rng.normal(size=(3, 3, 4, 2)).astype(np.float32))
  with tf.GradientTape() as tape:
    rounded = qa.quantize_kernel(kernel, depthwise=True)
    loss = tf.reduce_sum(rounded * 3.0)
  np.testing.assert_allclose(
      rounded.numpy(), int8_weights.per_channel_int8(kernel.numpy(), True),
      rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(tape.gradient(loss, kernel).numpy(), 3.0)


def test_the_paths_share_the_models_variables():
  model = _model()
  paths = qa.Paths(model)
  images = _images(8)
  assert {id(v) for v in paths.float_path.trainable_variables} == {
      id(v) for v in model.trainable_variables}
  before = paths.float_path(images).numpy()
  assert qa.round_kernels(model) == 3
  assert int8_weights.all_on_int8_grid(model)
  # The float path is the model once its kernels are on the grid (batch
  # norm, dropout in inference mode) ...
  np.testing.assert_allclose(model(images, training=False).numpy(), before,
                             atol=1e-5)
  # ... and follows the model's variables.
  head = model.get_layer('probabilities')
  head.bias.assign(head.bias + np.arange(4, dtype=np.float32))
  np.testing.assert_allclose(paths.float_path(images).numpy(),
                             model(images, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize('float_layers', [qa.FLOAT_LAYERS, ()])
def test_calibration_ranges_hold_each_tensor_and_zero(float_layers):
  paths = qa.Paths(_model(), float_layers)
  images = _images(12)
  ranges = paths.calibrate(images, batch_size=5)
  values = paths.taps(images)
  for i, ((low, high), tensor, fake) in enumerate(zip(
      ranges, values, paths.fake_quants)):
    if i in paths.shared_ranges:  # wider: shares another tensor's range
      continue
    tensor = tensor.numpy()
    assert low <= min(tensor.min(), 0.0) and high >= max(tensor.max(), 0.0)
    assert low == pytest.approx(min(tensor.min(), 0.0), abs=1e-5)
    assert float(fake.minimum.numpy()) == pytest.approx(low)
  if float_layers:
    # The float input scaling's output (pixels 0 and 255 present): [-1, 1].
    assert ranges[0] == pytest.approx((-1.0, 1.0), abs=1e-5)
  else:
    # x * 2 over [0, 2] and the sum's [-1, 1] together (the converter's MUL
    # output), then [-1, 1].
    assert ranges[0] == pytest.approx((-1.0, 2.0), abs=1e-5)
    assert ranges[1] == pytest.approx((-1.0, 1.0), abs=1e-5)


def _two_block_model(seed=0):
  """MobileNetV2's block_1 -> block_2 pattern: a linear projection that
  feeds both the next block's expansion and its residual Add, and one that
  feeds only the Add."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((SIZE, SIZE, 3), name='image')
  x = keras.layers.Rescaling(2.0, offset=-1.0, name='backbone_preprocess')(
      inputs)
  x = keras.layers.Conv2D(8, 3, padding='same', use_bias=False, name='c1')(x)
  x = keras.layers.BatchNormalization(name='c1_bn')(x)
  x = keras.layers.ReLU(6.0, name='c1_relu')(x)
  p1 = keras.layers.Conv2D(4, 1, use_bias=False, name='p1')(x)
  p1 = keras.layers.BatchNormalization(name='p1_bn')(p1)
  y = keras.layers.Conv2D(12, 1, use_bias=False, name='expand')(p1)
  y = keras.layers.BatchNormalization(name='expand_bn')(y)
  y = keras.layers.ReLU(6.0, name='expand_relu')(y)
  p2 = keras.layers.Conv2D(4, 1, use_bias=False, name='p2')(y)
  p2 = keras.layers.BatchNormalization(name='p2_bn')(p2)
  x = keras.layers.Add(name='add')([p1, p2])
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  outputs = keras.layers.Dense(4, activation='softmax', dtype='float32',
                               name='probabilities')(x)
  model = keras.Model(inputs, outputs, name='two_blocks')
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.moving_variance.assign(rng.uniform(0.2, 2, n).astype(np.float32))
      layer.gamma.assign(rng.uniform(0.5, 2, n).astype(np.float32))
      # p2 wider than p1, so that sharing the Add's range shows.
      scale = 4.0 if layer.name == 'p2_bn' else 1.0
      layer.gamma.assign(layer.gamma * scale)
  return model


def test_the_ranges_are_the_int8_files_scales(tmp_path):
  """Each simulated int8 tensor has the scale the converter gave it: the
  projection that also feeds a convolution over its own range, the one
  that feeds only the Add over the Add's range and its own together."""
  model = _two_block_model()
  qa.round_kernels(model)  # the converter calibrates the model as exported
  calibration = _images(16, seed=1)
  export.export_serving_model(model, str(tmp_path / 'serving'), SIZE)
  int8 = tflite.convert_int8(str(tmp_path / 'serving'), list(calibration),
                             bias_correction=False)
  paths = qa.Paths(model)
  ranges = dict(zip([f.name for f in paths.fake_quants],
                    paths.calibrate(calibration)))
  names = [f.name for f in paths.fake_quants]
  assert names.index('p1_bn_fake_quant') not in paths.shared_ranges
  assert names.index('p2_bn_fake_quant') in paths.shared_ranges
  interpreter = tf.lite.Interpreter(model_content=int8)
  scales = {}  # an op's output is named by its last layer's scope first
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    for index in op['outputs']:
      tensor = interpreter.get_tensor_details()[index]
      params = tensor['quantization_parameters']['scales']
      scope = re.match(r'[^/]+/(\w+)_\d+/', tensor['name'])
      if scope and len(params) == 1:
        scales[scope.group(1)] = float(params[0])
  assert set(scales) == {'c1_relu', 'p1_bn', 'expand_relu', 'p2_bn', 'add',
                         'gap'}, scales
  for layer, scale in scales.items():
    low, high = ranges[f'{layer}_fake_quant']
    assert (high - low) / 255 == pytest.approx(scale, rel=1e-3), layer


def test_the_quantized_path_simulates_the_int8_file(tmp_path):
  """The claim training rests on: the quantized path is much closer to the
  converter's int8 file than the float path is."""
  model = _model()
  qa.round_kernels(model)
  calibration = _images(32, seed=1)
  export.export_serving_model(model, str(tmp_path / 'serving'), SIZE)
  int8 = tflite.convert_int8(str(tmp_path / 'serving'), list(calibration),
                             bias_correction=False)
  paths = qa.Paths(model)
  paths.calibrate(calibration)
  test = _images(64, seed=2)
  on_device = tflite.predict(int8, tflite.as_pixels(list(test)))
  simulated = paths.quantized_path(test).numpy()
  unquantized = paths.float_path(test).numpy()
  sim_error = np.abs(simulated - on_device).mean()
  float_error = np.abs(unquantized - on_device).mean()
  assert float_error > 1e-3  # the activations' rounding is visible here
  assert sim_error < 0.5 * float_error, (sim_error, float_error)


def test_training_pulls_the_model_back_onto_its_teacher():
  """The trainer's gradients reach the model's own variables, the teacher
  stays as it was, and the metrics are the documented ones."""
  model = _model()
  teacher = qa.frozen_copy(model)
  expected = teacher(_images(64, seed=4), training=False).numpy()
  head = model.get_layer('probabilities')
  head.bias.assign(head.bias + np.array([8.0, 0.0, -4.0, 0.0], np.float32))
  paths = qa.Paths(model)
  images = _images(64, seed=4)
  paths.calibrate(images[:16])
  trainer = qa.QuantizationAwareTrainer(paths, teacher)
  trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
  labels = np.zeros(len(images), np.int64)  # not used by the loss
  before = trainer.evaluate(images, labels, batch_size=16, verbose=0,
                            return_dict=True)
  history = trainer.fit(images, labels, batch_size=16, epochs=8, verbose=0,
                        callbacks=[qa.Recalibrate(paths, images[:16])])
  after = trainer.evaluate(images, labels, batch_size=16, verbose=0,
                           return_dict=True)
  assert set(history.history) == {'loss', 'anchor_loss', 'consistency_loss',
                                  'agreement', 'teacher_agreement'}
  assert after['anchor_loss'] < 0.3 * before['anchor_loss'], (before, after)
  assert after['teacher_agreement'] > before['teacher_agreement']
  np.testing.assert_allclose(teacher(images, training=False).numpy(),
                             expected, atol=1e-6)


@pytest.fixture(scope='module')
def qat_run(tiny_tfrecords, tmp_path_factory):
  out = tmp_path_factory.mktemp('int8_qat')
  return train_tiny(tiny_tfrecords, out, model='cnn_baseline',
                    image_size=TINY_IMAGE_SIZE, int8_qat_epochs=2)


def test_the_trainer_runs_the_phase_last_on_every_layer(qat_run):
  _, history = qat_run
  phases = history['phases']
  assert [p['phase'] for p in phases] == ['train', trainer.INT8_QAT_PHASE]
  last = phases[-1]
  assert last['epochs'] == 2 and last['learning_rate'] == 1e-4
  assert last['int8_rounded_convolutions'] >= 4
  # cnn_baseline: each conv + BN + ReLU one int8 tensor, then the pool.
  assert last['int8_fake_quant_tensors'] == (
      last['int8_rounded_convolutions'] + 1)
  for key in ('agreement', 'val_agreement', 'teacher_agreement',
              'consistency_loss'):
    assert history['history'][key][:1] == [None]
    # (a KL divergence near 0 can round to just below it)
    assert all(-1e-6 <= v for v in history['history'][key][1:])


def test_after_the_phase_the_int8_file_has_the_savedmodels_weights(
    qat_run, tiny_tfrecords):
  fn_args, _ = qat_run
  from mobile_export import data  # pylint: disable=g-import-not-at-top
  images = data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE,
                                      20, seed=0)
  folded = _conv_filters(tflite.converter(fn_args.serving_model_dir).convert())
  quantized = _conv_filters(tflite.convert_int8(fn_args.serving_model_dir,
                                                images))
  assert len(folded) == len(quantized) >= 4
  for f, q in zip(folded, quantized):
    np.testing.assert_allclose(q, f, rtol=1e-4, atol=1e-5 * np.abs(f).max())
