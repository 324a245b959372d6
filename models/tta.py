"""Test-time augmentation: probabilities averaged over flipped / rotated views.

A dermoscopic lesion has no up or left, so its class is invariant to the
dihedral group of the square image: ``flips`` averages the model over 4
views (identity, left-right, up-down, both), ``dihedral`` over all 8 (the 4
rotations by 90 degrees, each also mirrored).  models/export.py applies it
inside the serving signatures (``serving_default``, ``serving_images``), so
TFMA's evaluation, the Predictions component and model servers see the
averaged probabilities; the views go through the model as one batch.
"""

from typing import Callable, List

import tensorflow as tf

def views(images: tf.Tensor, mode: str) -> List[tf.Tensor]:
  """The views of images [N, S, S, C] that ``mode`` (one of
  configs.TTA_MODES) averages over."""
  if mode == 'none':
    return [images]
  if mode == 'flips':
    return [images, tf.reverse(images, axis=[2]), tf.reverse(images, axis=[1]),
            tf.reverse(images, axis=[1, 2])]
  if mode == 'dihedral':
    rotations = [tf.image.rot90(images, k) for k in range(4)]
    return rotations + [tf.reverse(r, axis=[2]) for r in rotations]
  raise ValueError(f'unknown tta mode {mode!r} (see configs.TTA_MODES)')


def average(predict: Callable, inputs, mode: str, image_key: str = 'image'):
  """predict's probabilities averaged over the views of ``mode``.

  ``inputs``: an image batch, or a dict whose ``image_key`` is one (its other
  entries, e.g. patient metadata, are repeated for every view).  ``predict``
  maps inputs of that structure to probabilities [N, K].
  """
  if mode == 'none':
    return predict(inputs)
  images = inputs[image_key] if isinstance(inputs, dict) else inputs
  batch = views(images, mode)
  count = len(batch)
  stacked = tf.concat(batch, axis=0)
  if isinstance(inputs, dict):
    stacked = {**{k: tf.concat([v] * count, axis=0)
                  for k, v in inputs.items() if k != image_key},
               image_key: stacked}
  return tf.reduce_mean(tf.stack(tf.split(predict(stacked), count, axis=0)),
                        axis=0)
