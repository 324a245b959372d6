"""Training augmentation as Keras preprocessing layers inside the model.

Keras runs these layers only when the model is called with training=True
(``fit``); evaluation, ``predict`` and the exported serving signatures call
it with training=False, where each layer returns its input unchanged.  So the
serving signatures get exactly the training preprocessing, without the
randomness.  Inputs are float images in [0, 1].
"""

import keras

# R5's ImageDataGenerator settings, expressed as these layers' options
# (benchmarks/input_pipeline.py compares the two).
R5 = dict(flip='horizontal', rotation=10.0, zoom=0.05, translation=0.02,
          brightness=0.1, contrast=0.0)


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
  for layer in layers(**options):
    x = layer(x)
  return x


def from_config(cfg: dict) -> dict:
  """augmentation.layers' options from the Trainer's custom_config."""
  return dict(flip=cfg.get('augment_flip', 'horizontal_and_vertical'),
              rotation=float(cfg.get('augment_rotation', 0.0)),
              zoom=float(cfg.get('augment_zoom', 0.0)),
              brightness=float(cfg.get('augment_brightness', 0.0)),
              contrast=float(cfg.get('augment_contrast', 0.0)),
              translation=float(cfg.get('augment_translation', 0.0)))
