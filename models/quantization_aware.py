"""Quantization-aware training against the int8 file's own rounding.

The int8 .tflite (mobile_export/tflite.py) rounds two things: each
convolution kernel, batch norm folded in, to int8 with one symmetric scale
per output channel (models/int8_weights.py), and each activation tensor
between integer ops to int8 over the range the converter saw on the
calibration images (scale (max - min) / 255, zero exactly representable).
The int8_weights phase removes the first; what is left on the real-data
models is the second (BENCHMARKS.md, "int8 on the real-data models").

This module builds two views of a trained Keras model that share its
variables:

* the **float path**: every convolution kernel rounded to its int8 grid
  (straight-through: the gradient reaches the float kernel), activations
  float -- what the SavedModel computes once ``round_kernels`` has put the
  kernels on the grid;
* the **quantized path**: the same, each activation the int8 file keeps as
  an int8 tensor rounded by a fake-quantization op over its calibrated
  range -- a simulation of the int8 file.

Where the converter keeps a tensor int8 follows its fusion: a Conv2D /
DepthwiseConv2D folds the batch norm after it, and a ReLU / ReLU6 after
either fuses into the op, so only the last layer's output of such a chain
is a tensor; Add, the global average pool, the input scaling, the colour
constancy layer and the concatenation of image features with the metadata
features are int8 tensors of their own; padding and pooling keep their
input's range; Dense layers and the softmax stay float here.  (The int8
file keeps only the output layer and the softmax float and quantizes hidden
Dense layers, mixed_input's and cnn_baseline's: this simulation does not
round those, a gap that cost the real-data file under 0.001 top-1
agreement, BENCHMARKS.md, "int8 of the classifier head".)
The layers the int8 file keeps float (FLOAT_LAYERS: colour constancy and
the backbone's input scaling) stay float in the quantized path too; where
their output meets an integer op the converter quantizes it once, over its
own range, and so does the quantized path.
In both paths batch norm, augmentation and dropout run in inference mode:
batch norm folds exactly only with its moving statistics, and both paths
must see the same input.

``QuantizationAwareTrainer`` distils both paths from a frozen copy of the
model as it entered the phase (the teacher): the float path towards the
teacher's probabilities, and the quantized path towards the float path's
(held constant), so that the int8 file, which the quantized path
simulates, agrees with the SavedModel, which the float path is, while the
SavedModel stays close to the model it was.  Labels are not used: trained
on them at this stage the model drifted (eval balanced accuracy 0.635 ->
0.579 in one epoch on real data).  ``calibrate`` sets the ranges from images in inference mode, as the
converter does; the Trainer re-calibrates before every epoch.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from models import color
from models import int8_weights
from models import registry

# Layer types whose output the converter keeps as an int8 tensor (unless it
# fuses the layer into its consumer), by class name (our own layers too).
INT8_OUTPUT_TYPES = ('Conv2D', 'DepthwiseConv2D', 'BatchNormalization',
                     'ReLU', 'Add', 'GlobalAveragePooling2D', 'Rescaling',
                     'ShadesOfGray', 'CaffePreprocess')
_CONVOLUTIONS = ('Conv2D', 'DepthwiseConv2D')
_FUSED_ACTIVATIONS = ('ReLU',)
# Keras layers (by name) whose ops the int8 file keeps float
# (mobile_export/tflite.py, DEFAULT_FLOAT_LAYERS): Shades of Gray's x^6 and
# its per-image means do not fit 8 bits (a mid-grey pixel's x^6 is 4 steps of
# 1/255), and its gain scales the whole image; the input scaling after it,
# because the converter then quantized the [0, 1] colour-corrected image with
# the scale of the scaling's constant, 2/255 (7 bits; the scaled image over
# [-1, 1] has all 8).  BENCHMARKS.md, "int8: quantization-aware training"
# and "The simulation against the int8 file".
FLOAT_LAYERS: Tuple[str, ...] = (color.LAYER_NAME, registry.PREPROCESS_LAYER)
# The identity at inference: float after a float layer.
_PASS_THROUGH_TYPES = ('Dropout', 'FusedAugment', 'Identity')
# Run in inference mode in both paths.
_INFERENCE_TYPES = ('BatchNormalization', 'Dropout', 'FusedAugment')


def _kind(layer) -> str:
  return type(layer).__name__


def _consumers(layer) -> List[keras.layers.Layer]:
  # Keras 3 keeps a layer's outgoing graph edges as Nodes (ops/node.py).
  return [node.operation for node in layer._outbound_nodes]  # pylint: disable=protected-access


def _fuses_into(layer, consumer) -> bool:
  """Whether the converter folds ``layer`` into ``consumer``'s op (or the
  consumer into it): conv -> batch norm; conv / batch norm / add -> ReLU."""
  kind, after = _kind(layer), _kind(consumer)
  if kind in _CONVOLUTIONS and after == 'BatchNormalization':
    return True
  if kind in _CONVOLUTIONS + ('BatchNormalization', 'Add') and (
      after in _FUSED_ACTIVATIONS):
    return True
  return False


def is_int8_tensor(layer, quantized_inputs: bool = True) -> bool:
  """Whether ``layer``'s output is an int8 tensor of the int8 file.

  ``quantized_inputs``: whether one of its inputs is (a Concatenate is int8
  only on the image path: the metadata vector stays float).
  """
  kind = _kind(layer)
  if kind == 'Concatenate':
    return quantized_inputs
  if kind not in INT8_OUTPUT_TYPES:
    return False
  consumers = _consumers(layer)
  return not (consumers and all(_fuses_into(layer, c) for c in consumers))


def quantize_kernel(kernel, depthwise: bool):
  """The kernel on its per-output-channel symmetric int8 grid, with a
  straight-through gradient (identity) to the float kernel."""
  shape = ops.shape(kernel)
  channels = (kernel.shape[2] * kernel.shape[3] if depthwise
              else kernel.shape[3])
  flat = ops.reshape(kernel, (-1, channels))
  scale = ops.max(ops.abs(flat), axis=0) / int8_weights.INT8_MAX
  scale = ops.stop_gradient(ops.where(scale > 0, scale, ops.ones_like(scale)))
  rounded = ops.reshape(ops.round(flat / scale) * scale, shape)
  return kernel + ops.stop_gradient(rounded - kernel)


class QuantizedKernelConv(keras.layers.Layer):
  """Calls a Conv2D / DepthwiseConv2D with its kernel on the int8 grid (the
  wrapped layer's own variables: nothing is copied)."""

  def __init__(self, conv, **kwargs):
    super().__init__(name=f'{conv.name}_int8_kernel', **kwargs)
    self.conv = conv
    self.depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)

  def call(self, inputs):
    conv = self.conv
    # Rounded in float32, then in the compute dtype (mixed precision).
    kernel = ops.cast(quantize_kernel(ops.convert_to_tensor(conv.kernel),
                                      self.depthwise), inputs.dtype)
    if self.depthwise:
      outputs = ops.depthwise_conv(
          inputs, kernel, strides=conv.strides, padding=conv.padding,
          dilation_rate=conv.dilation_rate, data_format=conv.data_format)
    else:
      outputs = conv.convolution_op(inputs, kernel)
    if conv.use_bias:
      outputs = outputs + ops.cast(conv.bias, outputs.dtype)
    if conv.activation is not None:
      outputs = conv.activation(outputs)
    return outputs

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)


class Scale(keras.layers.Layer):
  """x * scale + offset (one half of a Rescaling, as the converter splits
  it into MUL and ADD)."""

  def __init__(self, scale, name: str, offset=0.0, **kwargs):
    super().__init__(name=name, **kwargs)
    self.scale, self.offset = scale, offset

  def call(self, inputs):
    dtype = self.compute_dtype
    return (ops.cast(inputs, dtype) * ops.cast(self.scale, dtype) +
            ops.cast(self.offset, dtype))

  def compute_output_shape(self, input_shape):
    return input_shape


class InferenceCall(keras.layers.Layer):
  """Calls a layer with training=False (its variables, nothing copied)."""

  def __init__(self, layer, **kwargs):
    super().__init__(name=f'{layer.name}_inference', **kwargs)
    self.layer = layer

  def call(self, inputs):
    return self.layer(inputs, training=False)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)


class FakeQuant(keras.layers.Layer):
  """Rounds a tensor to 8 bits over [minimum, maximum] as the converter's
  int8 activation (zero exactly representable; straight-through gradient
  inside the range, none outside)."""

  def __init__(self, name: str, **kwargs):
    super().__init__(name=name, **kwargs)
    self.minimum = self.add_weight(shape=(), initializer='zeros',
                                   trainable=False, name='minimum')
    self.maximum = self.add_weight(shape=(), initializer='ones',
                                   trainable=False, name='maximum')

  def call(self, inputs):
    return tf.quantization.fake_quant_with_min_max_vars(
        tf.cast(inputs, tf.float32), self.minimum, self.maximum, num_bits=8,
        narrow_range=False)

  def compute_output_shape(self, input_shape):
    return input_shape


class Paths:
  """The float and quantized paths of a trained model, and the ranges.

  Attributes:
    model: the trained model (its variables are the paths' variables).
    float_path: kernels on the int8 grid, float activations.
    quantized_path: the same with every int8 activation fake-quantized.
    taps: the float path's int8 tensors (each FakeQuant's input), as one
      model's outputs, for calibration.
    fake_quants: the quantized path's FakeQuant layers, in taps' order.
  """

  def __init__(self, model: keras.Model,
               float_layers: Sequence[str] = FLOAT_LAYERS):
    self.model = model
    self.float_layers = frozenset(float_layers)
    self._quantized_outputs = set()  # ids of KerasTensors on int8 tensors
    self._float_region = {}  # id of a float layer's output -> that layer
    self._boundaries = {}  # id of such an output -> its quantized tensor
    self._tapped: List[keras.layers.Layer] = []  # each tap's layer
    self._shares_next: List[int] = []  # taps quantized with the next one's
    taps: List = []
    self.float_path = self._clone(model, quantize=False, taps=taps)
    self.taps = keras.Model(self.float_path.inputs, taps,
                            name=f'{model.name}_int8_taps')
    self.fake_quants: List[FakeQuant] = []
    self._quantized_outputs = set()
    self._float_region = {}
    self._boundaries = {}
    self.quantized_path = self._clone(model, quantize=True, taps=None)
    if len(self.fake_quants) != len(taps):
      raise AssertionError(f'{len(self.fake_quants)} fake-quant ops for '
                           f'{len(taps)} taps')
    self.shared_ranges = self._linear_add_inputs()

  def _linear_add_inputs(self) -> Dict[int, List[int]]:
    """{tap: the taps whose ranges it shares}: for each linear convolution
    output (a convolution or its batch norm, no activation) whose only
    consumers are Adds, and for the product of an input scaling (its offset
    is an ADD), the converter quantizes the tensor over its own range and
    the Add's together; a projection that also feeds another op (MobileNetV2's
    block_1 -> block_2 skip) keeps its own range (read from converted files:
    tests/models/test_quantization_aware.py)."""
    index = {id(layer): i for i, layer in enumerate(self._tapped)}
    shared = {}
    for i, layer in enumerate(self._tapped):
      if _kind(layer) not in _CONVOLUTIONS + ('BatchNormalization',):
        continue
      consumers = _consumers(layer)
      adds = sorted({index[id(c)] for c in consumers
                     if _kind(c) == 'Add' and id(c) in index})
      if adds and all(_kind(c) == 'Add' for c in consumers):
        shared[i] = adds
    for i in self._shares_next:
      shared.setdefault(i, []).append(i + 1)
    return shared

  def _clone(self, model, quantize: bool, taps: Optional[list]):
    def call(layer, *args, **kwargs):
      inputs = args[0] if args else None
      if isinstance(layer, keras.Model):
        # Flattened into the outer graph: its own int8 tensors get
        # fake-quant ops (or taps) like the outer model's.
        # (What keras.models.clone_model runs on a model's graph.)
        return layer._run_through_graph(  # pylint: disable=protected-access
            inputs, operation_fn=lambda op: op, call_fn=call)
      kind = _kind(layer)

      def point(tensor, name, shares_next_range=False, producer=layer):
        if quantize:
          fake = FakeQuant(f'{name}_fake_quant')
          self.fake_quants.append(fake)
          tensor = fake(tensor)
        else:
          if shares_next_range:
            self._shares_next.append(len(taps))
          taps.append(tensor)
          self._tapped.append(producer)
        self._quantized_outputs.add(id(tensor))
        return tensor

      from_float = [t for t in keras.tree.flatten((args, kwargs))
                    if id(t) in self._float_region]
      if layer.name in self.float_layers or (
          from_float and kind in _PASS_THROUGH_TYPES):
        # Float ops (and layers that are the identity at inference after
        # them): float until an integer op reads the output.
        if layer.name in self.float_layers:
          outputs, producer = layer(*args, **kwargs), layer
        else:
          outputs = InferenceCall(layer)(inputs)
          producer = self._float_region[id(from_float[0])]
        self._float_region[id(outputs)] = producer
        return outputs
      if from_float:
        # The converter's QUANTIZE where the float ops end: once per tensor,
        # over the range of the last float layer's output.
        for tensor in from_float:
          if id(tensor) not in self._boundaries:
            producer = self._float_region[id(tensor)]
            self._boundaries[id(tensor)] = point(tensor, producer.name,
                                                 producer=producer)
        args, kwargs = keras.tree.map_structure(
            lambda t: self._boundaries.get(id(t), t), (args, kwargs))
        inputs = args[0] if args else None
      if kind in _CONVOLUTIONS:
        outputs = QuantizedKernelConv(layer)(inputs)
      elif kind == 'Rescaling' and np.any(np.asarray(layer.offset) != 0):
        # The converter's MUL then ADD: the product is an int8 tensor of
        # its own, over its range and the sum's together (as an Add input).
        scaled = point(Scale(layer.scale, f'{layer.name}_mul')(inputs),
                       f'{layer.name}_mul', shares_next_range=True)
        outputs = Scale(1.0, f'{layer.name}_add', offset=layer.offset)(
            scaled)
      elif kind in _INFERENCE_TYPES:
        outputs = InferenceCall(layer)(inputs)
      else:
        outputs = layer(*args, **kwargs)
      flat_inputs = keras.tree.flatten((args, kwargs))
      quantized_in = any(id(t) in self._quantized_outputs for t in flat_inputs)
      if is_int8_tensor(layer, quantized_in):
        outputs = point(outputs, layer.name)
      elif kind in ('ZeroPadding2D', 'MaxPooling2D', 'Identity') and (
          quantized_in):
        # Same range as the input: an int8 tensor already.
        self._quantized_outputs.add(id(outputs))
      return outputs

    return keras.models.clone_model(model, clone_function=lambda l: l,
                                    call_function=call)

  def calibrate(self, inputs, batch_size: int = 32) -> List[tuple]:
    """Sets every FakeQuant's range to the min / max of its tensor over
    ``inputs`` (the float path in inference mode, as the converter's
    calibration); returns the ranges."""
    lows = highs = None
    for batch in _batches(inputs, batch_size):
      values = self.taps(batch, training=False)
      values = values if isinstance(values, (list, tuple)) else [values]
      low = [float(ops.min(v)) for v in values]
      high = [float(ops.max(v)) for v in values]
      lows = low if lows is None else np.minimum(lows, low)
      highs = high if highs is None else np.maximum(highs, high)
    lows, highs = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
    own_lows, own_highs = lows.copy(), highs.copy()
    for tap, adds in self.shared_ranges.items():
      lows[tap] = min([own_lows[tap]] + [own_lows[a] for a in adds])
      highs[tap] = max([own_highs[tap]] + [own_highs[a] for a in adds])
    ranges = []
    for fake, low, high in zip(self.fake_quants, lows, highs):
      # The converter's ranges always hold zero.
      low, high = min(float(low), 0.0), max(float(high), 0.0)
      if high - low < 1e-6:
        high = low + 1e-6
      fake.minimum.assign(low)
      fake.maximum.assign(high)
      ranges.append((low, high))
    return ranges


def _batches(inputs, batch_size: int):
  """Slices of an array or dict of arrays (a tf.data.Dataset of (x, y) or
  x batches passes as it is)."""
  if isinstance(inputs, tf.data.Dataset):
    for item in inputs:
      yield item[0] if isinstance(item, tuple) else item
    return
  count = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else (
      len(inputs))
  for start in range(0, count, batch_size):
    end = start + batch_size
    yield ({k: v[start:end] for k, v in inputs.items()}
           if isinstance(inputs, dict) else inputs[start:end])


def round_kernels(model: keras.Model) -> int:
  """Puts every convolution kernel on its int8 grid, in place (the float
  path's kernels become the model's); returns how many."""
  layers = int8_weights.convolutions(model)
  for layer in layers:
    kernel, depthwise = layer.kernel, isinstance(
        layer, keras.layers.DepthwiseConv2D)
    kernel.assign(int8_weights.per_channel_int8(
        keras.ops.convert_to_numpy(kernel), depthwise))
  return len(layers)


def frozen_copy(model: keras.Model) -> keras.Model:
  """A copy of the model with its current weights, not trainable (the
  teacher of QuantizationAwareTrainer)."""
  # From the config, not clone_model, which also compiles the copy like the
  # model (its metrics and losses need not be serializable).
  copy = model.__class__.from_config(model.get_config())
  copy.set_weights(model.get_weights())
  copy.trainable = False
  return copy


def kl_divergence(target, predicted):
  """Mean over the batch of KL(target || predicted), probabilities."""
  return ops.mean(ops.sum(target * (
      ops.log(ops.clip(target, 1e-7, 1.0)) -
      ops.log(ops.clip(predicted, 1e-7, 1.0))), axis=-1))


def _agreement(a, b):
  return ops.cast(ops.equal(ops.argmax(a, -1), ops.argmax(b, -1)), 'float32')


class QuantizationAwareTrainer(keras.Model):
  """Trains ``paths.model``'s variables so that the int8 file agrees with
  the SavedModel, and the SavedModel keeps the model's decisions:

    loss = KL(teacher || float path)
           + consistency x KL(float path || quantized path),

  the float path's probabilities held constant in the second term.  The
  teacher is the model as it entered the phase (``frozen_copy``): the labels
  are not used, so what early stopping chose on the eval split (and the
  class weighting it was trained with) is what both paths learn to keep.

  Metrics: ``loss``, ``anchor_loss`` (the first term),
  ``consistency_loss``, ``agreement`` (top-1, quantized path vs float
  path: the int8 file's parity) and ``teacher_agreement`` (float path vs
  teacher).
  """

  def __init__(self, paths: Paths, teacher: keras.Model,
               consistency: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.paths = paths
    self.teacher = teacher
    self.consistency = float(consistency)
    self.trackers = {name: keras.metrics.Mean(name=name) for name in (
        'loss', 'anchor_loss', 'consistency_loss', 'agreement',
        'teacher_agreement')}

  def call(self, inputs, training=False):
    return self.paths.quantized_path(inputs, training=training)

  @property
  def metrics(self):
    return list(self.trackers.values())

  def _terms(self, x, training):
    teacher = ops.stop_gradient(self.teacher(x, training=False))
    expected = self.paths.float_path(x, training=training)
    quantized = self.paths.quantized_path(x, training=training)
    anchor = kl_divergence(teacher, expected)
    consistency = kl_divergence(ops.stop_gradient(expected), quantized)
    values = {'loss': anchor + self.consistency * consistency,
              'anchor_loss': anchor, 'consistency_loss': consistency,
              'agreement': _agreement(expected, quantized),
              'teacher_agreement': _agreement(teacher, expected)}
    return values

  def _track(self, values):
    for name, value in values.items():
      self.trackers[name].update_state(value)
    return {m.name: m.result() for m in self.metrics}

  def train_step(self, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    variables = self.paths.model.trainable_variables
    with tf.GradientTape() as tape:
      values = self._terms(x, training=True)
    gradients = tape.gradient(values['loss'], variables)
    self.optimizer.apply_gradients(zip(gradients, variables))
    return self._track(values)

  def test_step(self, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return self._track(self._terms(x, training=False))


class Recalibrate(keras.callbacks.Callback):
  """Re-calibrates the ranges before every epoch (the weights move)."""

  def __init__(self, paths: Paths, inputs):
    super().__init__()
    self.paths = paths
    self.inputs = inputs

  def on_epoch_begin(self, epoch, logs=None):
    self.paths.calibrate(self.inputs)


def fit(model: keras.Model, train_ds, eval_ds,
        strategy: tf.distribute.Strategy, learning_rate: float,
        consistency: float, calibration, initial_epoch: int, epochs: int,
        steps_per_epoch: Optional[int] = None, callbacks: Sequence = (),
        verbose: int = 2):
  """The Trainer's int8_qat phase: every layer of ``model`` trains (batch
  norm in inference mode) with QuantizationAwareTrainer, distilled from the
  model as it enters the phase; the ranges come from ``calibration``
  (trainer.calibration_dataset: the exporter's images), re-calibrated
  before every epoch; the kernels end on the int8 grid.  Returns (History,
  phase details)."""
  with strategy.scope():
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
      layer.trainable = True
    teacher = frozen_copy(model)
    paths = Paths(model)
    trainer = QuantizationAwareTrainer(paths, teacher, consistency=consistency)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
  result = trainer.fit(
      train_ds, validation_data=eval_ds, initial_epoch=initial_epoch,
      epochs=initial_epoch + epochs, steps_per_epoch=steps_per_epoch,
      callbacks=[Recalibrate(paths, calibration), *callbacks],
      verbose=verbose)
  return result, {'int8_rounded_convolutions': round_kernels(model),
                  'int8_fake_quant_tensors': len(paths.fake_quants),
                  'consistency': float(consistency)}
