"""Grad-CAM (Selvaraju et al., 2017) for the registry's image models.

Every registry model names its last spatial feature map ``feature_map`` (an
identity layer before global pooling).  Grad-CAM weights that map's channels
by the mean gradient of the top class's probability with respect to each
channel, sums them and keeps the positive part: the regions whose features
raise the predicted class.  The heatmap is normalized to [0, 1] per image
(all zeros when nothing raises the class) at the feature map's resolution;
callers upsample it to the image.

The computation is plain TensorFlow (``tf.GradientTape``), so it runs
in-graph: ``models/export.py`` adds it to the SavedModel as the
``serving_gradcam`` signature, and the run report and any client explain a
prediction from the SavedModel alone.
"""

from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

FEATURE_MAP_LAYER = 'feature_map'
GRADCAM_SIGNATURE = 'serving_gradcam'   # float32 images -> probabilities, heatmap
HEATMAP_KEY = 'heatmap'                 # float32 [N, h, w] in [0, 1]


def unsupported_reason(model: keras.Model) -> Optional[str]:
  """Why Grad-CAM cannot explain this model, or None when it can."""
  if len(model.inputs) != 1:
    return (f'the model has {len(model.inputs)} inputs; the Grad-CAM '
            'signature takes images alone')
  try:
    model.get_layer(FEATURE_MAP_LAYER)
  except ValueError:
    return f'the model has no layer named {FEATURE_MAP_LAYER!r}'
  return None


def gradcam_model(model: keras.Model) -> keras.Model:
  """The same layers and weights, answering (feature map, probabilities)."""
  reason = unsupported_reason(model)
  if reason:
    raise ValueError(reason)
  return keras.Model(model.inputs,
                     [model.get_layer(FEATURE_MAP_LAYER).output,
                      model.outputs[0]])


def gradcam(grad_model: keras.Model, images: tf.Tensor
            ) -> Tuple[tf.Tensor, tf.Tensor]:
  """(probabilities [N, classes], heatmap [N, h, w] in [0, 1]).

  ``grad_model`` is ``gradcam_model(model)``.  Examples do not interact at
  inference (no training-mode batch statistics), so one gradient of the
  batch's summed top-class probabilities gives every image's own gradient.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  with tf.GradientTape() as tape:
    feature_map, probabilities = grad_model(images, training=False)
    feature_map = tf.cast(feature_map, tf.float32)
    probabilities = tf.cast(probabilities, tf.float32)
    top = tf.argmax(probabilities, axis=-1)
    score = tf.gather(probabilities, top, batch_dims=1)
  grads = tape.gradient(score, feature_map)
  channel_weights = tf.reduce_mean(grads, axis=[1, 2])          # [N, C]
  cam = tf.nn.relu(tf.einsum('nhwc,nc->nhw', feature_map, channel_weights))
  peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
  heatmap = tf.math.divide_no_nan(cam, peak)
  return probabilities, heatmap


def overlay(image: np.ndarray, heatmap: np.ndarray,
            image_weight: float = 0.55) -> np.ndarray:
  """The heatmap, upsampled (bilinear) and coloured (jet), over the image.

  Args:
    image: float [H, W, 3] in [0, 1].
    heatmap: float [h, w] in [0, 1] (``gradcam``'s, at the feature map's
      resolution).
    image_weight: the image's share of each pixel; the rest is the colour.

  Returns:
    float [H, W, 3] in [0, 1]: red where the evidence for the class is
    strongest, blue where there is none.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.float32)
  heat = tf.image.resize(np.asarray(heatmap, np.float32)[..., None],
                         image.shape[:2], method='bilinear').numpy()[..., 0]
  colour = matplotlib.colormaps['jet'](np.clip(heat, 0, 1))[..., :3]
  return np.clip(image_weight * image + (1 - image_weight) * colour, 0, 1)
