"""The fused augmentation warp and the decode cache (tiny data, seconds)."""

import numpy as np
import tensorflow as tf

from models import augmentation
from models import trainer


def _images(n=3, size=17):
  return np.random.default_rng(0).random((n, size, size, 3)).astype('float32')


def _warp(images, **params):
  n, h, w = images.shape[:3]
  full = {k: tf.fill([n], float(params.get(k, 0.0))) for k in (
      'angle', 'zoom', 'shift_y', 'shift_x')}
  t = augmentation.affine_transforms(
      h, w, tf.fill([n], int(params.get('flip_h', 0))),
      tf.fill([n], int(params.get('flip_v', 0))), **full)
  return augmentation.warp(tf.constant(images), t).numpy()


def test_identity_parameters_give_the_identity_image():
  x = _images()
  np.testing.assert_allclose(_warp(x), x, atol=1e-6)


def test_flips_are_exact():
  x = _images()
  np.testing.assert_allclose(_warp(x, flip_h=1), x[:, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(_warp(x, flip_v=1), x[:, ::-1], atol=1e-6)
  np.testing.assert_allclose(_warp(x, flip_h=1, flip_v=1), x[:, ::-1, ::-1],
                             atol=1e-6)


def test_known_rotation_and_shift_match():
  x = _images()
  # 90 degrees about the centre of a square image lands on the pixel grid.
  rotated = _warp(x, angle=np.pi / 2)
  np.testing.assert_allclose(rotated, np.rot90(x, k=1, axes=(1, 2)),
                             atol=1e-5)
  # A whole-pixel shift: output(r, c) = input(r + 2, c - 3), inside the image.
  shifted = _warp(x, shift_y=2.0, shift_x=-3.0)
  np.testing.assert_allclose(shifted[:, :-2, 3:], x[:, 2:, :-3], atol=1e-6)


def test_fused_equals_composed_rotation_and_zoom():
  # The fused matrix equals the two transforms applied one after the other
  # (zoom in by 1.25, then rotate 30 degrees), away from the filled edges.
  x = np.random.default_rng(1).random((2, 41, 41, 3)).astype('float32')
  x = tf.image.resize(tf.image.resize(x, (8, 8)), (41, 41)).numpy()  # smooth
  fused = _warp(x, angle=np.pi / 6, zoom=0.25)
  composed = _warp(_warp(x, zoom=0.25), angle=np.pi / 6)
  inner = slice(10, 31)
  # Two resamples blur a little more than one: 0.022 max, 0.0011 mean here.
  diff = np.abs(fused - composed)[:, inner, inner]
  assert diff.max() < 0.05 and diff.mean() < 0.005
  # The other order (rotate, then zoom) is also the same map about the centre
  # for a uniform zoom; a wrong angle is not.
  wrong = np.abs(fused - _warp(_warp(x, zoom=0.25), angle=-np.pi / 6))
  assert wrong[:, inner, inner].mean() > 5 * diff.mean()


def test_augmentation_is_off_in_inference_and_on_in_training():
  layer = augmentation.fused(**augmentation.R5, seed=5)
  x = _images(4, 32)
  np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
  np.testing.assert_array_equal(np.asarray(layer(x)), x)
  y = np.asarray(layer(x, training=True))
  assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0
  assert np.abs(y - x).mean() > 0.01
  assert augmentation.fused(flip='') is None
  clone = augmentation.FusedAugment.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()


def test_saturation_jitter_scales_chroma_about_the_luma():
  # Mid-range colours, so that no factor in 1 +- 0.5 clips.
  x = 0.3 + 0.4 * _images(6, 8)
  luma = (x * np.array(augmentation.LUMA_WEIGHTS)).sum(-1, keepdims=True)
  np.testing.assert_allclose(augmentation.saturate(tf.constant(x), 1.0), x,
                             atol=1e-6)
  grey = augmentation.saturate(tf.constant(x), 0.0).numpy()
  np.testing.assert_allclose(grey, np.repeat(luma, 3, -1), atol=1e-6)

  layer = augmentation.fused(flip='', saturation=0.5, seed=3)
  np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
  y = np.asarray(layer(x, training=True))
  # Per image: the same factor on every pixel's chroma, luma kept.
  np.testing.assert_allclose(
      (y * np.array(augmentation.LUMA_WEIGHTS)).sum(-1, keepdims=True), luma,
      atol=1e-5)
  factors = ((y - luma) / (x - luma)).reshape(len(x), -1)
  np.testing.assert_allclose(factors - factors[:, :1], 0.0, atol=1e-3)
  assert np.all((factors >= 0.5 - 1e-3) & (factors <= 1.5 + 1e-3))
  assert np.ptp(factors[:, 0]) > 0.05  # Drawn per image.
  assert augmentation.from_config({'augment_saturation': 0.5})[
      'saturation'] == 0.5
  clone = augmentation.FusedAugment.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert clone.saturation == 0.5


def test_saturation_leaves_the_other_draws_as_they_were():
  """The saturation draw comes last, so a seeded layer without it augments
  geometry and brightness exactly as before the option existed."""
  x = _images(4, 16)
  without = augmentation.fused(**augmentation.R5, seed=5)
  with_saturation = augmentation.fused(**augmentation.R5, saturation=0.0001,
                                       seed=5)
  outputs = []
  for layer in (without, with_saturation):
    tf.random.set_seed(0)  # Eager ops with one op seed draw anew each call.
    outputs.append(np.asarray(layer(x, training=True)))
  np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-3)
  assert np.abs(outputs[0] - x).mean() > 0.01


def test_cached_input_pipeline_equals_uncached(tiny_tfrecords):
  def batches(cache):
    ds = trainer.make_dataset([tiny_tfrecords[0]], 24, 8, training=False,
                              seed=0, cache=cache)
    passes = [[(np.asarray(x), np.asarray(y)) for x, y in ds]
              for _ in range(2)]
    return passes[-1]  # cached: the second pass reads the cache
  uncached, cached = batches(False), batches(True)
  assert len(uncached) == len(cached) > 0
  for (xu, yu), (xc, yc) in zip(uncached, cached):
    np.testing.assert_array_equal(xu, xc)
    np.testing.assert_array_equal(yu, yc)
