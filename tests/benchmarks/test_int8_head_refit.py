"""benchmarks/int8_head_refit.py: the fit recovers a known head, and the
head it reads and writes is the one the int8 file computes with."""

import numpy as np
import pytest

from benchmarks import int8_head_refit
from mobile_export import tflite
from models import preprocessing
from tests.conftest import TINY_IMAGE_SIZE


def _softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def test_fit_recovers_a_known_head():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(600, 6))
  w_true = rng.normal(size=(4, 6))
  b_true = rng.normal(size=4)
  reference = _softmax(features @ w_true.T + b_true)
  w0 = w_true + rng.normal(scale=0.5, size=w_true.shape)
  w, b, info = int8_head_refit.fit_head(features, reference, w0,
                                        np.zeros(4), l2=1e-8)
  assert info['loss_after'] < info['loss_before']
  np.testing.assert_allclose(_softmax(features @ w.T + b), reference,
                             atol=2e-3)
  # A strong ridge keeps the weights where they were.
  w_kept, _, _ = int8_head_refit.fit_head(features, reference, w0,
                                          np.zeros(4), l2=1e3)
  assert np.abs(w_kept - w0).max() < 1e-2


@pytest.fixture(scope='module')
def int8_model(trained_model, tiny_tfrecords):
  images = [image.numpy() / 255.0 for image, _ in
            preprocessing.image_label_dataset(
                [tiny_tfrecords[0]], TINY_IMAGE_SIZE).take(20)]
  buffer = tflite.convert_int8(trained_model.serving_model_dir, images)
  return buffer, tflite.as_pixels(images)


def test_features_and_head_are_what_the_int8_file_computes(int8_model):
  buffer, pixels = int8_model
  features = int8_head_refit.head_features(buffer, pixels)
  w, b = int8_head_refit.head_weights(buffer)
  assert features.shape == (len(pixels), w.shape[1])
  np.testing.assert_allclose(_softmax(features @ w.T + b),
                             tflite.predict(buffer, pixels), atol=2e-4)
  # Another head written in: the file computes with it, the body unchanged.
  rng = np.random.default_rng(1)
  w2 = w + rng.normal(scale=0.1, size=w.shape)
  b2 = b + 1.0
  changed = int8_head_refit.with_head(buffer, w2, b2)
  assert len(changed) == len(buffer)
  np.testing.assert_allclose(tflite.predict(changed, pixels),
                             _softmax(features @ w2.T + b2), atol=2e-4)
  np.testing.assert_allclose(int8_head_refit.head_features(changed, pixels),
                             features)
