"""int8 conversion of the raw-image signature, and its TFLite metadata."""

import json
import os
import zipfile
import io

import numpy as np
import pytest
import tensorflow as tf
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


@pytest.fixture(scope='module')
def int8_model(trained_model, images):
  buffer = tflite.convert_int8(trained_model.serving_model_dir,
                               [im / 255.0 for im in images[:30]])
  return tflite.add_metadata(
      buffer, configs.LABELS, name='test-model', description='d',
      version='v1', author='a', licenses='l',
      label_descriptions=[configs.LABEL_DISPLAY_NAMES[n]
                          for n in configs.LABELS])


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
  float_ops = [d for d in interpreter.get_tensor_details()
               if d['dtype'] == np.float32]
  # Only the dequantized output is float.
  assert len(float_ops) <= 2, [d['name'] for d in float_ops]


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
