"""float16 / int8 conversion of the raw-image signature, and its metadata."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_lite_support.metadata.python import metadata as tflite_metadata

from mobile_export import tflite
from models import features
from models import preprocessing
from pipeline import configs
from tests.conftest import TINY_IMAGE_SIZE


@pytest.fixture(scope='module')
def images(tiny_tfrecords):
  out = []
  for image, _ in preprocessing.image_label_dataset(
      [tiny_tfrecords[0]], TINY_IMAGE_SIZE).take(80):
    out.append(image.numpy())
  return np.stack(out)  # uint8


def _with_metadata(buffer):
  return tflite.add_metadata(
      buffer, configs.LABELS, name='test-model', description='d',
      version='v1', author='a', licenses='l',
      label_descriptions=[configs.LABEL_DISPLAY_NAMES[n]
                          for n in configs.LABELS])


@pytest.fixture(scope='module')
def int8_model(trained_model, images):
  return _with_metadata(tflite.convert_int8(
      trained_model.serving_model_dir, [im / 255.0 for im in images[:30]]))


@pytest.fixture(scope='module')
def float16_model(trained_model):
  return _with_metadata(tflite.convert(trained_model.serving_model_dir,
                                       tflite.FLOAT16))


def _run(model_buffer, batch):
  interpreter = tf.lite.Interpreter(model_content=model_buffer)
  interpreter.allocate_tensors()
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  results = []
  for image in batch:
    interpreter.set_tensor(inp['index'], image[None].astype(inp['dtype']))
    interpreter.invoke()
    results.append(interpreter.get_tensor(out['index'])[0])
  return inp, out, np.stack(results)


def test_int8_model_is_integer_inside_with_uint8_in_float_out(int8_model,
                                                             images):
  inp, out, probs = _run(int8_model, images[30:])
  assert inp['dtype'] == np.uint8 and out['dtype'] == np.float32
  scale, zero_point = inp['quantization']
  assert scale == pytest.approx(1 / 255, rel=0.02) and zero_point == 0
  assert probs.shape == (50, len(configs.LABELS))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)
  interpreter = tf.lite.Interpreter(model_content=int8_model)
  tensors = interpreter.get_tensor_details()
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  float_inputs = {op['op_name'] for op in ops
                  if any(tensors[i]['dtype'] == np.float32
                         for i in op['inputs'] if i >= 0)}
  # Selective float fallback: only the output layer (its FULLY_CONNECTED)
  # and the softmax (tflite.DEFAULT_FLOAT_OPS) compute in float; every
  # convolution and the hidden Dense layer are int8.
  assert float_inputs <= {'FULLY_CONNECTED', 'SOFTMAX'}, float_inputs
  assert 'SOFTMAX' in float_inputs
  assert any(op['op_name'] == 'CONV_2D' for op in ops)
  for op in ops:
    if op['op_name'] in ('CONV_2D', 'DEPTHWISE_CONV_2D'):
      assert tensors[op['inputs'][0]]['dtype'] == np.int8, op
  dense_weights = [tensors[op['inputs'][1]]['dtype'] for op in ops
                   if op['op_name'] == 'FULLY_CONNECTED']
  # cnn_baseline: gap -> dense (hidden, int8) -> probabilities (float).
  assert dense_weights == [np.int8, np.float32], dense_weights


def test_int8_model_mostly_agrees_with_the_savedmodel(trained_model,
                                                      int8_model, images):
  loaded = tf.saved_model.load(trained_model.serving_model_dir)
  reference = loaded.signatures[features.IMAGE_SIGNATURE](
      images=tf.constant(images[30:] / 255.0, tf.float32))[
          features.PREDICTION_KEY].numpy()
  _, _, probs = _run(int8_model, images[30:])
  assert np.abs(probs - reference).max() < 0.1
  # Top-1 must agree wherever the float model's top-1 leads its runner-up by
  # more than the int8 error seen above (a barely trained model has ties).
  ranked = np.sort(reference, axis=1)
  clear = ranked[:, -1] - ranked[:, -2] > 2 * np.abs(probs - reference).max()
  assert clear.sum() >= 5, clear.sum()
  np.testing.assert_array_equal(probs.argmax(1)[clear],
                                reference.argmax(1)[clear])


def test_metadata_carries_labels_normalization_and_names(int8_model):
  displayer = tflite_metadata.MetadataDisplayer.with_model_buffer(int8_model)
  assert displayer.get_packed_associated_file_list() == ['labels.txt']
  labels = displayer.get_associated_file_buffer('labels.txt').decode().split()
  assert labels == list(configs.LABELS)
  meta = json.loads(displayer.get_metadata_json())
  assert meta['name'] == 'test-model' and meta['version'] == 'v1'
  tensor = meta['subgraph_metadata'][0]['input_tensor_metadata'][0]
  norm = [p for p in tensor['process_units']
          if p['options_type'] == 'NormalizationOptions'][0]['options']
  assert norm == {'mean': [0.0], 'std': [1.0]}
  assert tensor['content']['content_properties']['color_space'] == 'RGB'
  output = meta['subgraph_metadata'][0]['output_tensor_metadata'][0]
  assert 'Melanoma' in output['description']


def test_conversion_needs_representative_images(trained_model):
  with pytest.raises(ValueError, match='representative'):
    tflite.convert_int8(trained_model.serving_model_dir, [])


def test_int8_input_is_raw_pixels_even_if_calibration_never_reaches_0_or_1(
    trained_model, images):
  # Calibration images in [0.2, 0.8] only: without the pinned pixel range
  # the input scale would be 0.6/255 and an app's raw pixels would be
  # misread.
  dim = [0.2 + 0.6 * im / 255.0 for im in images[:10]]
  buffer = tflite.convert_int8(trained_model.serving_model_dir, dim)
  interpreter = tf.lite.Interpreter(model_content=buffer)
  scale, zero_point = interpreter.get_input_details()[0]['quantization']
  assert scale == pytest.approx(1 / 255, rel=1e-3) and zero_point == 0


def test_float16_model_takes_floats_and_matches_the_savedmodel(
    trained_model, float16_model, images):
  inp, out, probs = _run(float16_model, images[30:] / 255.0)
  assert inp['dtype'] == np.float32 and out['dtype'] == np.float32
  assert list(inp['shape']) == [1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3]
  loaded = tf.saved_model.load(trained_model.serving_model_dir)
  reference = loaded.signatures[features.IMAGE_SIGNATURE](
      images=tf.constant(images[30:] / 255.0, tf.float32))[
          features.PREDICTION_KEY].numpy()
  # float16 weights, float32 arithmetic: close, but not bit-identical.
  np.testing.assert_allclose(probs, reference, atol=5e-3)
  # predict() feeds what the Task Library would: pixels / 255 for floats.
  np.testing.assert_allclose(tflite.predict(float16_model, images[30:]),
                             probs, atol=1e-6)


def test_float16_metadata_normalizes_pixels_to_unit_range(float16_model):
  meta = tflite.read_metadata(float16_model)
  tensor = meta['subgraph_metadata'][0]['input_tensor_metadata'][0]
  norm = [p for p in tensor['process_units']
          if p['options_type'] == 'NormalizationOptions'][0]['options']
  assert norm == {'mean': [0.0], 'std': [255.0]}
  assert tensor['stats'] == {'max': [1.0], 'min': [0.0]}
  size = tensor['content']['content_properties']['default_size']
  assert size == {'width': TINY_IMAGE_SIZE, 'height': TINY_IMAGE_SIZE}
  assert meta['author'] == 'a' and meta['license'] == 'l'
  assert f'{TINY_IMAGE_SIZE}x{TINY_IMAGE_SIZE}' in meta['description']


def test_input_spec_describes_what_an_app_feeds(int8_model, float16_model):
  int8 = tflite.input_spec(int8_model)
  assert int8['dtype'] == 'uint8'
  assert int8['shape'] == [1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3]
  assert int8['quantization']['zero_point'] == 0
  assert int8['normalization'] == {'mean': [0.0], 'std': [1.0]}
  assert int8['color_space'] == 'RGB'
  float16 = tflite.input_spec(float16_model)
  assert float16['dtype'] == 'float32' and float16['quantization'] is None
  assert float16['normalization'] == {'mean': [0.0], 'std': [255.0]}


def test_unknown_format_is_refused(trained_model):
  with pytest.raises(ValueError, match='unknown TFLite format'):
    tflite.convert(trained_model.serving_model_dir, 'int4')
  with pytest.raises(ValueError, match='unknown TFLite format'):
    tflite.file_name('int4')
  assert tflite.file_name(tflite.INT8) == 'model_int8.tflite'


def test_signature_inputs_read_without_loading_equal_the_loaded_ones(
    trained_model, tmp_path):
  saved = trained_model.serving_model_dir
  loaded = tf.saved_model.load(saved)
  expected = {name: set(function.structured_input_signature[1])
              for name, function in loaded.signatures.items()}
  read = tflite.signature_inputs(saved)
  assert {k: v for k, v in read.items() if k in expected} == expected
  assert expected[features.IMAGE_SIGNATURE] == {'images'}
  assert tflite.signature_key(saved) == features.IMAGE_SIGNATURE
  with pytest.raises(FileNotFoundError, match='not a SavedModel'):
    tflite.signature_inputs(str(tmp_path))


def _buffers(model_buffer):
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_buffer))
  return [np.asarray(b.data if b.data is not None else [], np.uint8)
          for b in model.buffers]


def _mean_log_ratio(reference, probabilities):
  ratio = np.mean(np.log(np.clip(reference, 1e-7, 1)) -
                  np.log(np.clip(probabilities, 1e-7, 1)), axis=0)
  return ratio - ratio.mean()


def test_head_bias_correction_moves_only_the_head_bias(trained_model, images):
  calibration = images[:30]
  raw = tflite.convert_int8(trained_model.serving_model_dir,
                            [im / 255.0 for im in calibration])
  reference = tflite.predict(raw, calibration)
  # A quantized body whose logits are off by a known per-class shift: the
  # same model with that shift added to its head's bias.
  offset = np.linspace(-1.0, 1.0, len(configs.LABELS)).astype(np.float32)
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(raw))
  tflite.head_bias(model)[:] += offset
  shifted = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
  before = _mean_log_ratio(reference, tflite.predict(shifted, calibration))
  assert np.abs(before).max() > 0.5
  corrected, shift = tflite.correct_head_bias(shifted, reference, calibration)
  after = _mean_log_ratio(reference, tflite.predict(corrected, calibration))
  # On average over the calibration images the logits match the reference
  # again (up to a shift common to all classes), and the shift undone is
  # the one added.
  assert np.abs(after).max() < 1e-3, after
  np.testing.assert_allclose(shift, -(offset - offset.mean()), atol=1e-3)
  np.testing.assert_allclose(tflite.predict(corrected, calibration),
                             reference, atol=1e-3)
  # One buffer changed, the head's bias: by the returned shift.
  old, new = _buffers(shifted), _buffers(corrected)
  assert len(old) == len(new)
  changed = [i for i, (a, b) in enumerate(zip(old, new))
             if a.shape != b.shape or (a != b).any()]
  assert len(changed) == 1, changed
  np.testing.assert_allclose(new[changed[0]].view(np.float32) -
                             old[changed[0]].view(np.float32), shift,
                             atol=1e-5)
  inp, _, _ = _run(corrected, calibration[:1])
  assert inp['dtype'] == np.uint8
  assert inp['quantization'][0] == pytest.approx(1 / 255, rel=0.02)


def test_head_bias_correction_needs_the_head_in_float(trained_model, images):
  calibration = images[:10]
  integer = tflite.convert_int8(trained_model.serving_model_dir,
                                [im / 255.0 for im in calibration],
                                float_ops=(), float_layers=(),
                                bias_correction=False)
  reference = np.full((10, len(configs.LABELS)), 1 / len(configs.LABELS))
  with pytest.raises(ValueError, match='output layer is quantized'):
    tflite.correct_head_bias(integer, reference, calibration)


def test_int8_conversion_corrects_the_head_bias_by_default(trained_model,
                                                           images):
  saved = trained_model.serving_model_dir
  calibration = [im / 255.0 for im in images[:20]]
  plain = tflite.convert_int8(saved, calibration, bias_correction=False)
  reference = tflite.reference_probabilities(saved, calibration)
  corrected, _ = tflite.correct_head_bias(plain, reference, images[:20])
  assert tflite.convert_int8(saved, calibration) == corrected
  with pytest.raises(ValueError, match='output layer is quantized'):
    tflite.convert_int8(saved, calibration, float_ops=(), float_layers=(),
                        bias_correction=True)
  # The fully integer file has no float output layer to correct: left as
  # it is.
  assert tflite.convert_int8(saved, calibration, float_ops=(),
                             float_layers=()) == (
      tflite.convert_int8(saved, calibration, float_ops=(), float_layers=(),
                          bias_correction=False))
