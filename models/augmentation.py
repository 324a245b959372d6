"""Training augmentation inside the model: one fused layer (FusedAugment).

The models hold one FusedAugment layer (``apply``): flip, rotation, shift
and zoom composed into one affine matrix per image and resampled once
(ImageProjectiveTransformV3 on the batch), then contrast / brightness /
saturation jitter.  ``layers()`` is the older chain of Keras 3
preprocessing layers (one resample each), kept for
benchmarks/input_pipeline.py's record.

Keras runs these layers only when the model is called with training=True
(``fit``); evaluation, ``predict`` and the exported serving signatures call
it with training=False, where each layer returns its input unchanged.  So the
serving signatures get exactly the training preprocessing, without the
randomness.  Inputs are float images in [0, 1].
"""

import keras
import tensorflow as tf

# R5's ImageDataGenerator settings, expressed as these layers' options
# (benchmarks/input_pipeline.py compares the two).
R5 = dict(flip='horizontal', rotation=10.0, zoom=0.05, translation=0.02,
          brightness=0.1, contrast=0.0)

# ITU-R BT.601 luma: saturation is scaled about it (saturate()).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def saturate(images, factor):
  """Images [N, H, W, 3] in [0, 1] with their saturation scaled by
  ``factor`` (a scalar or one per image, [N, 1, 1, 1]) about each pixel's
  luma: 0 grey, 1 unchanged; clipped to [0, 1].  Grey pixels and the luma
  itself stay as they are (before the clipping)."""
  luma = tf.reduce_sum(images * tf.constant(LUMA_WEIGHTS, images.dtype),
                       axis=-1, keepdims=True)
  return tf.clip_by_value(luma + factor * (images - luma), 0.0, 1.0)


def layers(flip: str = 'horizontal_and_vertical', rotation: float = 0.0,
           zoom: float = 0.0, brightness: float = 0.0, contrast: float = 0.0,
           translation: float = 0.0, seed: int = None) -> list:
  """The augmentation layers for these options, in application order.

  Args:
    flip: 'horizontal', 'vertical', 'horizontal_and_vertical' or '' (none).
    rotation: maximum rotation in degrees, either way.
    zoom: maximum zoom in or out, as a fraction of the size.
    brightness: maximum brightness shift, as a fraction of the [0, 1] range.
    contrast: maximum contrast change factor.
    translation: maximum shift, as a fraction of height and width.
    seed: optional seed of the random draws.
  """
  out = []
  if flip:
    out.append(keras.layers.RandomFlip(flip, seed=seed, name='augment_flip'))
  if rotation:
    out.append(keras.layers.RandomRotation(
        rotation / 360.0, fill_mode='nearest', seed=seed,
        name='augment_rotation'))
  if translation:
    out.append(keras.layers.RandomTranslation(
        translation, translation, fill_mode='nearest', seed=seed,
        name='augment_translation'))
  if zoom:
    out.append(keras.layers.RandomZoom(
        (-zoom, zoom), fill_mode='nearest', seed=seed, name='augment_zoom'))
  if brightness:
    out.append(keras.layers.RandomBrightness(
        brightness, value_range=(0.0, 1.0), seed=seed,
        name='augment_brightness'))
  if contrast:
    out.append(keras.layers.RandomContrast(
        contrast, value_range=(0.0, 1.0), seed=seed, name='augment_contrast'))
  return out


def apply(x, **options):
  """The models' augmentation: one FusedAugment layer (none if all off)."""
  layer = fused(**options)
  return layer(x) if layer is not None else x


def fused(flip: str = 'horizontal_and_vertical', rotation: float = 0.0,
          zoom: float = 0.0, brightness: float = 0.0, contrast: float = 0.0,
          translation: float = 0.0, saturation: float = 0.0,
          seed: int = None):
  """layers()' options, and ``saturation`` (the maximum change of the
  saturation factor, 1 +- saturation; layers() has no such layer), as one
  FusedAugment layer, or None if all are off."""
  if not (flip or rotation or zoom or brightness or contrast or translation
          or saturation):
    return None
  return FusedAugment(flip=flip, rotation=rotation, zoom=zoom,
                      brightness=brightness, contrast=contrast,
                      translation=translation, saturation=saturation,
                      seed=seed, name='augment')


def affine_transforms(height, width, flip_h, flip_v, angle, zoom, shift_y,
                      shift_x):
  """ImageProjectiveTransformV3 rows for per-image parameters ([B] tensors).

  Output pixel p maps to input pixel c + F R (p - c) / (1 + zoom) + shift:
  F flips (flip_h / flip_v are 0 or 1), R rotates by ``angle`` radians about
  the centre c, zoom > 0 zooms in, shifts are in pixels.  One matrix per
  image, so the whole warp is a single resample.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
  sx = (1.0 - 2.0 * tf.cast(flip_h, tf.float32)) / (1.0 + zoom)
  sy = (1.0 - 2.0 * tf.cast(flip_v, tf.float32)) / (1.0 + zoom)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # [[a0, a1], [b0, b1]] = F @ R @ (I / (1 + zoom))
  a0, a1 = sx * cos, -sx * sin
  b0, b1 = sy * sin, sy * cos
  a2 = cx - a0 * cx - a1 * cy + shift_x
  b2 = cy - b0 * cx - b1 * cy + shift_y
  zeros = tf.zeros_like(a0)
  return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images, transforms):
  """One bilinear resample of a [B, H, W, C] batch; edges repeat (nearest)."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms,
      output_shape=tf.shape(images)[1:3], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='NEAREST')


@keras.saving.register_keras_serializable(package='skinlesion')
class FusedAugment(keras.layers.Layer):
  """layers()' chain as one layer: one random affine warp + colour jitter.

  Per image: flip (as ``flip``), rotation uniform in +-``rotation`` degrees,
  shift uniform in +-``translation`` of height/width, zoom uniform in
  +-``zoom``, composed into one matrix and resampled once (bilinear,
  nearest fill, like the Keras layers); then brightness (add uniform
  +-``brightness``) and contrast (scale about the image mean by a factor in
  1 +- ``contrast``), clipped to [0, 1]; then saturation (saturate() by a
  factor in 1 +- ``saturation``).  training=False: the identity.
  """

  def __init__(self, flip='horizontal_and_vertical', rotation=0.0, zoom=0.0,
               brightness=0.0, contrast=0.0, translation=0.0, seed=None,
               saturation=0.0, **kwargs):
    super().__init__(**kwargs)
    self.flip, self.rotation, self.zoom = flip, float(rotation), float(zoom)
    self.brightness, self.contrast = float(brightness), float(contrast)
    self.translation, self.seed = float(translation), seed
    self.saturation = float(saturation)
    self._calls = 0

  def _uniform(self, n, limit):
    self._calls += 1
    seed = None if self.seed is None else self.seed + self._calls
    return tf.random.uniform([n], -limit, limit, seed=seed)

  def _coin(self, n, on):
    if not on:
      return tf.zeros([n], tf.int32)
    self._calls += 1
    seed = None if self.seed is None else self.seed + self._calls
    return tf.cast(tf.random.uniform([n], seed=seed) < 0.5, tf.int32)

  def call(self, x, training=None):
    if not training:
      return x
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    shape = tf.shape(x)
    n, h, w = shape[0], shape[1], shape[2]
    flip = self.flip or ''
    if flip or self.rotation or self.zoom or self.translation:
      transforms = affine_transforms(
          h, w,
          self._coin(n, 'horizontal' in flip),
          self._coin(n, 'vertical' in flip),
          self._uniform(n, self.rotation * 3.141592653589793 / 180.0),
          self._uniform(n, self.zoom),
          self._uniform(n, self.translation) * tf.cast(h, tf.float32),
          self._uniform(n, self.translation) * tf.cast(w, tf.float32))
      x = warp(x, transforms)
    if self.contrast:
      factor = 1.0 + self._uniform(n, self.contrast)[:, None, None, None]
      mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
      x = (x - mean) * factor + mean
    if self.brightness:
      x = x + self._uniform(n, self.brightness)[:, None, None, None]
    if self.contrast or self.brightness:
      x = tf.clip_by_value(x, 0.0, 1.0)
    if self.saturation:  # Drawn last: the other draws keep their seeds.
      x = saturate(x, 1.0 + self._uniform(n, self.saturation)[:, None, None,
                                                               None])
    return tf.cast(x, dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(flip=self.flip, rotation=self.rotation, zoom=self.zoom,
                  brightness=self.brightness, contrast=self.contrast,
                  translation=self.translation, saturation=self.saturation,
                  seed=self.seed)
    return config


def from_config(cfg: dict) -> dict:
  """augmentation.layers' options from the Trainer's custom_config."""
  return dict(flip=cfg.get('augment_flip', 'horizontal_and_vertical'),
              rotation=float(cfg.get('augment_rotation', 0.0)),
              zoom=float(cfg.get('augment_zoom', 0.0)),
              brightness=float(cfg.get('augment_brightness', 0.0)),
              contrast=float(cfg.get('augment_contrast', 0.0)),
              translation=float(cfg.get('augment_translation', 0.0)),
              saturation=float(cfg.get('augment_saturation', 0.0)))
