"""The TFLite Task Library reads our metadata and preprocesses as we do.

It runs in .venv-tflite (see conftest.task_library_python), on JPEG files,
with no pre-processing code of ours.  The end-to-end test runs it on the
pushed models; this test checks the input contract itself, with a model
whose "class scores" are its input pixels.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mobile_export import tflite
from models import export
from models import preprocessing
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import classify_with_task_library

PIXELS = TINY_IMAGE_SIZE * TINY_IMAGE_SIZE * 3


@pytest.fixture(scope='module')
def pixel_echo_model(tmp_path_factory):
  """float16 .tflite (float32 input) whose outputs are its input values."""
  inputs = keras.Input((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3))
  model = keras.Model(inputs, keras.layers.Flatten()(inputs))
  out = tmp_path_factory.mktemp('echo')
  export.export_serving_model(model, str(out / 'saved_model'),
                              TINY_IMAGE_SIZE)
  buffer = tflite.add_metadata(
      tflite.convert(str(out / 'saved_model'), tflite.FLOAT16),
      [f'p{i}' for i in range(PIXELS)], name='echo', description='d',
      version='3', author='a', licenses='l')
  path = str(out / 'echo.tflite')
  with open(path, 'wb') as f:
    f.write(buffer)
  return path


def test_task_library_feeds_the_model_our_preprocessing(
    task_library_python, pixel_echo_model, tiny_archive):
  jpegs = sorted(glob.glob(os.path.join(tiny_archive, '**', '*.jpg'),
                           recursive=True))[:12]
  answer = classify_with_task_library(task_library_python, pixel_echo_model,
                                      jpegs)
  assert answer['name'] == 'echo' and answer['version'] == '3'
  assert len(answer['labels']) == PIXELS
  # The model saw pixel / 255 (metadata: mean 0, std 255): x 255 = pixels.
  seen = np.array([r['scores'] for r in answer['results']]) * 255.0
  ours = np.stack([preprocessing.decode_and_resize(
      tf.io.read_file(path), TINY_IMAGE_SIZE).numpy().reshape(-1)
                   for path in jpegs]).astype(np.float64)
  difference = np.abs(seen - ours)
  # Same RGB order, same bilinear resize of the whole image, same scaling;
  # the Task Library's JPEG decoder and fixed-point resize differ from
  # TensorFlow's by about one grey level (measured: mean 1.1, max 5).  A
  # wrong normalization, channel order, crop or nearest-neighbour resize is
  # tens of levels off.
  assert difference.mean() < 2.5, difference.mean()
  assert difference.max() <= 10, difference.max()
