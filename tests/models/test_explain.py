"""Grad-CAM: the heatmap points where a crafted model looks.

The crafted model's feature map has two channels: red intensity and blue
intensity (a fixed 1x1 convolution).  Its head reads one channel only.  On an
image with a red square in one corner and a blue square in the opposite one,
Grad-CAM must peak on the square of the channel the head reads, and move when
the head reads the other channel.  The SavedModel's ``serving_gradcam``
signature must give the same answer as the eager computation.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import cnn_baseline
from models import explain
from models import export
from models import features

SIZE = 16


def crafted_model(read_channel: int) -> keras.Model:
  inputs = keras.Input((SIZE, SIZE, 3), name='image')
  colour = keras.layers.Conv2D(2, 1, use_bias=False, name='colour')
  x = colour(inputs)
  x = keras.layers.Identity(name=explain.FEATURE_MAP_LAYER)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  head = keras.layers.Dense(2, activation='softmax', name='head')
  outputs = head(x)
  model = keras.Model(inputs, outputs)
  kernel = np.zeros((1, 1, 3, 2), np.float32)
  kernel[0, 0, 0, 0] = 1.0   # channel 0: red
  kernel[0, 0, 2, 1] = 1.0   # channel 1: blue
  colour.set_weights([kernel])
  # Class 1's score grows with the channel the head reads; nothing else.
  dense = np.zeros((2, 2), np.float32)
  dense[read_channel] = [-4.0, 4.0]
  head.set_weights([dense, np.zeros(2, np.float32)])
  return model


def two_squares() -> np.ndarray:
  image = np.zeros((1, SIZE, SIZE, 3), np.float32)
  image[0, 1:5, 1:5, 0] = 1.0       # red, top left
  image[0, 11:15, 11:15, 2] = 1.0   # blue, bottom right
  return image


def _peak(heatmap):
  return np.unravel_index(np.argmax(heatmap), heatmap.shape)


@pytest.mark.parametrize('channel,region', [(0, (slice(1, 5), slice(1, 5))),
                                            (1, (slice(11, 15),
                                                 slice(11, 15)))])
def test_heatmap_peaks_on_what_the_head_reads(channel, region):
  model = crafted_model(channel)
  probabilities, heatmap = explain.gradcam(explain.gradcam_model(model),
                                           two_squares())
  heatmap = heatmap.numpy()[0]
  assert probabilities.numpy()[0].argmax() == 1
  assert heatmap.shape == (SIZE, SIZE)
  assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0.0
  inside = np.zeros_like(heatmap, bool)
  inside[region] = True
  assert inside[_peak(heatmap)]
  # The square the head ignores gets nothing.
  assert heatmap[~inside].max() == pytest.approx(0.0, abs=1e-6)


def test_batch_gives_each_image_its_own_map():
  model = crafted_model(0)
  image = two_squares()
  moved = np.zeros_like(image)
  moved[0, 9:13, 2:6, 0] = 1.0
  _, batch = explain.gradcam(explain.gradcam_model(model),
                             np.concatenate([image, moved]))
  _, alone = explain.gradcam(explain.gradcam_model(model), moved)
  np.testing.assert_allclose(batch.numpy()[1], alone.numpy()[0], atol=1e-6)
  assert _peak(batch.numpy()[0]) != _peak(batch.numpy()[1])


def test_savedmodel_signature_explains_like_eager(tmp_path):
  model = crafted_model(1)
  export.export_serving_model(model, str(tmp_path), SIZE)
  loaded = tf.saved_model.load(str(tmp_path))
  assert explain.GRADCAM_SIGNATURE in loaded.signatures
  answer = loaded.signatures[explain.GRADCAM_SIGNATURE](
      images=tf.constant(two_squares()))
  probabilities, heatmap = explain.gradcam(explain.gradcam_model(model),
                                           two_squares())
  np.testing.assert_allclose(answer[explain.HEATMAP_KEY].numpy(),
                             heatmap.numpy(), atol=1e-5)
  np.testing.assert_allclose(answer[features.PREDICTION_KEY].numpy(),
                             probabilities.numpy(), atol=1e-6)
  images = loaded.signatures[features.IMAGE_SIGNATURE](
      images=tf.constant(two_squares()))[features.PREDICTION_KEY].numpy()
  np.testing.assert_allclose(answer[features.PREDICTION_KEY].numpy(), images,
                             atol=1e-6)


def test_models_without_a_single_image_input_are_refused():
  image = keras.Input((SIZE, SIZE, 3))
  age = keras.Input((1,))
  x = keras.layers.Identity(name=explain.FEATURE_MAP_LAYER)(image)
  x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x),
                                  age])
  two_inputs = keras.Model([image, age], keras.layers.Dense(2)(x))
  assert 'has 2 inputs' in explain.unsupported_reason(two_inputs)
  plain = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                            keras.layers.GlobalAveragePooling2D()])
  assert 'feature_map' in explain.unsupported_reason(plain)
  with pytest.raises(ValueError):
    explain.gradcam_model(plain)


def test_cnn_baseline_has_a_feature_map_before_pooling():
  model = cnn_baseline.build(num_classes=7, image_size=32, width=0.25)
  assert explain.unsupported_reason(model) is None
  assert model.get_layer(explain.FEATURE_MAP_LAYER).output.shape[1:3] == (8, 8)
  _, heatmap = explain.gradcam(explain.gradcam_model(model),
                               np.random.default_rng(0).random((2, 32, 32, 3)))
  assert heatmap.shape == (2, 8, 8)
  assert 0.0 <= float(tf.reduce_min(heatmap)) <= float(
      tf.reduce_max(heatmap)) <= 1.0
