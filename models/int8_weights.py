"""Convolution kernels on TFLite's int8 grid, for a SavedModel the int8 file equals.

TFLite's int8 file stores each convolution kernel (batch norm folded in) as
int8 with one symmetric scale per output channel: w ~ k * max|w_c| / 127,
k in [-127, 127].  On the real-data models that rounding alone flipped as
many top-1 decisions as the whole int8 file (BENCHMARKS.md, "Where int8
error grows"): the error is the weights', not the activations'.

``round_and_freeze`` puts every Conv2D / DepthwiseConv2D kernel of a model on
that grid and freezes those layers; the Trainer's ``int8_weights`` phase then
retrains what is left trainable (the head, the metadata MLP, batch norm where
it trains) on the rounded features.  Batch norm multiplies each output
channel by one number, and so does folding it into the kernel, so the folded
kernel stays on the grid of its own per-channel scale: the converter's int8
weights are exactly the SavedModel's, and the int8 file differs from the
SavedModel only by its activations' rounding.  The Dense layers are not
rounded: the int8 file keeps the output layer float
(mobile_export.tflite DEFAULT_FLOAT_LAYERS) and quantizes the hidden ones
(mixed_input's ``dense`` and metadata MLP), so there the file also rounds
weights the phase trained in float; on the real-data model's eval split
that moved top-1 agreement by under 0.001 (BENCHMARKS.md, "int8 of the
classifier head").
"""

from typing import List

import keras
import numpy as np

INT8_MAX = 127  # symmetric weights: [-127, 127], as TFLite's


def _channels(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
  """The kernel as [taps, output channels]: a Conv2D kernel [kh, kw, in,
  out] has ``out``, a depthwise one [kh, kw, in, multiplier] in *
  multiplier (TFLite's depthwise weights are [1, kh, kw, in * multiplier])."""
  return kernel.reshape(-1, kernel.shape[2] * kernel.shape[3]
                        if depthwise else kernel.shape[3])


def per_channel_int8(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
  """The kernel rounded to its per-output-channel symmetric int8 grid."""
  flat = _channels(np.asarray(kernel, np.float32), depthwise)
  scale = np.abs(flat).max(axis=0) / INT8_MAX
  scale[scale == 0] = 1.0
  return (np.round(flat / scale) * scale).reshape(kernel.shape).astype(
      np.float32)


def on_int8_grid(kernel: np.ndarray, depthwise: bool,
                 tolerance: float = 1e-4) -> bool:
  """Whether every channel of the kernel is k * max|w_c| / 127, integer k."""
  flat = _channels(np.asarray(kernel, np.float64), depthwise)
  scale = np.abs(flat).max(axis=0) / INT8_MAX
  scale[scale == 0] = 1.0
  steps = flat / scale
  return bool(np.all(np.abs(steps - np.round(steps)) <= tolerance))


def convolutions(model: keras.Model) -> List[keras.layers.Layer]:
  """Every Conv2D and DepthwiseConv2D of the model, nested models included
  (DepthwiseConv2D is not a Conv2D subclass in Keras 3)."""
  return [layer for layer in model._flatten_layers(  # pylint: disable=protected-access
      include_self=False, recursive=True)
          if isinstance(layer, (keras.layers.Conv2D,
                                keras.layers.DepthwiseConv2D))]


def _kernel(layer):
  """(kernel variable, depthwise?): Keras 3 names both kernels ``kernel``."""
  return layer.kernel, isinstance(layer, keras.layers.DepthwiseConv2D)


def round_and_freeze(model: keras.Model) -> int:
  """Rounds every convolution kernel to per-channel int8 in place and
  freezes those layers (their biases too); returns how many.

  Raises:
    ValueError: the model has no convolution.
  """
  layers = convolutions(model)
  if not layers:
    raise ValueError('no Conv2D or DepthwiseConv2D layer to round')
  for layer in layers:
    kernel, depthwise = _kernel(layer)
    kernel.assign(per_channel_int8(keras.ops.convert_to_numpy(kernel),
                                   depthwise))
    layer.trainable = False
  return len(layers)


def all_on_int8_grid(model: keras.Model) -> bool:
  """Whether every convolution kernel of the model is on its int8 grid."""
  return all(on_int8_grid(keras.ops.convert_to_numpy(kernel), depthwise)
             for kernel, depthwise in map(_kernel, convolutions(model)))
