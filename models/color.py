"""Colour constancy inside the model: Shades of Gray (Finlayson & Trezzi, 2004).

Dermoscopes and their lighting give images different colour casts; the
ISIC 2018/2019 winners normalized them with Shades of Gray (p = 6) before
the network.  Here it is a Keras layer on the model's [0, 1] image input,
before augmentation and the backbone's input scaling, so training and every
exported signature (and the TFLite files converted from them) apply the same
correction; it uses only POW, MEAN, ADD, DIV, MUL, MINIMUM / MAXIMUM, all
TFLite builtins.

Per image and channel c, the illuminant is the Minkowski p-mean of the
channel, ``e_c = (mean over pixels of x_c^p)^(1/p)`` (p = 1: gray world,
p -> infinity: max-RGB); each channel is scaled by ``(mean_c(e) + eps) /
(e_c + eps)``, so the illuminant becomes neutral while its mean (the image's
brightness) is kept, and the result is clipped to [0, 1].  A neutral image
(equal illuminants) is returned unchanged, a black one too (eps).
"""

import keras
from keras import ops

SHADES_OF_GRAY_P = 6.0
LAYER_NAME = 'color_constancy'


@keras.saving.register_keras_serializable('skinlesion')
class ShadesOfGray(keras.layers.Layer):
  """[N, H, W, 3] images in [0, 1] -> the same with a neutral illuminant.

  Computes in float32 whatever the dtype policy (x^6 of a dark pixel is
  below bfloat16's precision).
  """

  def __init__(self, p: float = SHADES_OF_GRAY_P, epsilon: float = 1e-6,
               **kwargs):
    kwargs.setdefault('dtype', 'float32')
    super().__init__(**kwargs)
    self.p = float(p)
    self.epsilon = float(epsilon)

  def call(self, images):
    images = ops.cast(images, 'float32')
    illuminant = ops.power(
        ops.mean(ops.power(images, self.p), axis=(1, 2), keepdims=True),
        1.0 / self.p)
    gray = ops.mean(illuminant, axis=-1, keepdims=True)
    gain = (gray + self.epsilon) / (illuminant + self.epsilon)
    return ops.clip(images * gain, 0.0, 1.0)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'p': self.p, 'epsilon': self.epsilon}


def apply(images, method: str = 'none'):
  """images through the colour constancy ``method`` (one of
  configs.COLOR_CONSTANCY_METHODS; 'none': unchanged)."""
  if method == 'none':
    return images
  if method == 'shades_of_gray':
    return ShadesOfGray(name=LAYER_NAME)(images)
  raise ValueError(f'unknown color_constancy {method!r} (see '
                   'configs.COLOR_CONSTANCY_METHODS)')
