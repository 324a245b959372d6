"""SavedModel (raw-image signature) -> float16 / int8 TFLite with metadata.

Conversion reads the ``serving_images`` signature (the single-view
``serving_images_single_view`` when the model was exported with test-time
augmentation) of a Keras 3
``ExportArchive`` SavedModel (the only path that converts with TF 2.16 and
Keras 3, see ../shared/STACK.md); for a model with patient metadata
(``mixed_input``) it reads ``serving_images_metadata_vector`` instead: the
image plus ONE float32 [1, K] tensor ``metadata``, the encoded metadata of
models/metadata_vector.py (no string ops in the .tflite; the image input is
the same as an image-only model's).  Two formats:

* ``float16``: weights stored as float16, float32 input in [0, 1] and float32
  probabilities; about half the size of the float32 model, same arithmetic.
* ``int8``: integer inside except the classifier's output layer and its
  softmax (DEFAULT_FLOAT_OPS and the output layer in DEFAULT_FLOAT_LAYERS: an
  int8 softmax's 1/256 steps made exact ties, BENCHMARKS.md, issue 16), the
  Shades of Gray layer and the backbone's input scaling; hidden Dense layers
  (mixed_input's 1,296 x 128 ``dense`` and metadata MLP, cnn_baseline's
  ``dense``) are int8 (BENCHMARKS.md, "int8 of the classifier head"); takes
  uint8 pixels (input quantization scale 1/255, zero point 0, i.e. the raw
  pixel values of the resized image) and returns float32 probabilities.  The
  metadata vector stays a float32 input (quantized inside, where it meets
  the metadata MLP).  The float output layer's bias is then corrected on the
  calibration images (``correct_head_bias``): quantization shifts the mean
  features the body hands the output layer, which moved real-data decisions
  toward one class.

Metadata (tflite-support writers) carries the model name, description,
version, author, licence, the label file, the input normalization matching
the input type (float: mean 0, std 255; uint8: mean 0, std 1), the colour
space and image size, and tensor descriptions, so the Task Library and
MediaPipe need no pre-processing code of the app.  A metadata model's
``metadata`` input is described slot by slot; the Task Library's
ImageClassifier takes one input, so an app runs such a model with the
Interpreter (docs/android.md).
"""

import json
import os
import re
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.tools import flatbuffer_utils
# Imported module by module: `import tflite_support` fails in a process that
# also has TensorFlow (see ../shared/STACK.md).
from tensorflow_lite_support.metadata import metadata_schema_py_generated as metadata_fb
from tensorflow_lite_support.metadata import schema_py_generated as schema_fb
from tensorflow_lite_support.metadata.python import metadata as tflite_metadata
from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info
from tensorflow_lite_support.metadata.python.metadata_writers import metadata_writer
from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils

from models import features
from models import metadata_vector
from models import quantization_aware
from models import registry

FLOAT16 = 'float16'
INT8 = 'int8'
FORMATS = (FLOAT16, INT8)
# A model with metadata gets, beside its two-input file of each format, an
# image-only file of that format (``image_only_int8``, ...): the same network
# with every metadata value missing (features.IMAGE_ONLY_SIGNATURE), one
# image input, for the Task Library / MediaPipe image classifiers.
IMAGE_ONLY_PREFIX = features.IMAGE_ONLY_FORMAT_PREFIX
LABELS_FILE = 'labels.txt'

# The int8 model's input must be quantized exactly as raw pixels (scale
# 1/255, zero point 0): the Task Library and MediaPipe copy uint8 pixels into
# a uint8 input as they are, whatever the metadata says.
_PIXEL_SCALE = 1.0 / 255.0
_PIXEL_SCALE_TOLERANCE = 1e-3  # relative


def file_name(fmt: str) -> str:
  """The file name of a format: ``model_float16.tflite``, ``model_int8.tflite``
  (``model_image_only_int8.tflite`` for its image-only variant)."""
  base_format(fmt)
  return f'model_{fmt}.tflite'


def image_only(fmt: str) -> str:
  """A format's image-only variant: 'int8' -> 'image_only_int8'."""
  _check_format(fmt)
  return IMAGE_ONLY_PREFIX + fmt


def base_format(fmt: str) -> Tuple[str, bool]:
  """(the format, whether it is the image-only variant): 'image_only_int8'
  -> ('int8', True), 'int8' -> ('int8', False); an unknown one raises
  ValueError."""
  variant = fmt.startswith(IMAGE_ONLY_PREFIX)
  base = fmt[len(IMAGE_ONLY_PREFIX):] if variant else fmt
  _check_format(base)
  return base, variant


def _check_format(fmt: str) -> None:
  if fmt not in FORMATS:
    raise ValueError(f'unknown TFLite format {fmt!r}; choose from {FORMATS}')


class MetadataInputsNotSupported(ValueError):
  """The model takes patient metadata, but its SavedModel has no
  metadata-vector signature (it was exported before there was one)."""


def signature_inputs(saved_model_dir: str) -> Dict[str, set]:
  """Each signature of a SavedModel -> the names of its inputs.

  Read from ``saved_model.pb`` (the SignatureDefs of its MetaGraph), without
  loading the model: loading restores every variable and function, which
  takes seconds for a large backbone, and conversion needs only the names.
  """
  saved_model = saved_model_pb2.SavedModel()
  path = os.path.join(saved_model_dir, tf.saved_model.SAVED_MODEL_FILENAME_PB)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{saved_model_dir} is not a SavedModel: no {path}')
  with tf.io.gfile.GFile(path, 'rb') as f:
    saved_model.ParseFromString(f.read())
  meta_graph, = saved_model.meta_graphs  # What tf.saved_model.save writes.
  return {name: set(signature.inputs)
          for name, signature in meta_graph.signature_def.items()}


def signature_key(saved_model_dir: str, image_only: bool = False) -> str:
  """The signature the .tflite files are converted from.

  For an image-only model the single-view image signature
  (``features.single_view_image_signature``): ``serving_images``, or, when
  the Trainer exported test-time augmentation, ``serving_images_single_view``
  (the plain model, one pass per image on the phone; the parity gate
  compares the .tflite with that same signature).  For a model whose
  ``serving_images`` also takes metadata (``mixed_input``),
  ``serving_images_metadata_vector`` (images and the encoded metadata; the
  plain model on one view as well).  ``image_only``: the image-only files
  of a model with metadata, ``serving_images_without_metadata``.

  Raises:
    MetadataInputsNotSupported: a model with metadata whose SavedModel lacks
      the metadata-vector (or, with ``image_only``, the image-only)
      signature (re-export it with this code).
    ValueError: ``image_only`` for a model without metadata (its files are
      image-only already).
  """
  signatures = signature_inputs(saved_model_dir)
  inputs = signatures[features.IMAGE_SIGNATURE]
  if inputs == {'images'}:
    if image_only:
      raise ValueError(f'{saved_model_dir} takes no metadata: its .tflite '
                       'files are image-only already')
    return features.single_view_image_signature(signatures)
  wanted = (features.IMAGE_ONLY_SIGNATURE if image_only
            else features.METADATA_VECTOR_SIGNATURE)
  if wanted in signatures:
    return wanted
  extra = sorted(set(inputs) - {'images'})
  raise MetadataInputsNotSupported(
      f'{saved_model_dir} takes metadata inputs {extra} but has no '
      f'{wanted} signature (TFLite cannot take the string metadata): '
      're-export the model with models/export.py, see docs/android.md')


def takes_metadata(saved_model_dir: str) -> bool:
  """Whether the .tflite files of this SavedModel take the metadata vector."""
  return signature_key(saved_model_dir) == features.METADATA_VECTOR_SIGNATURE


def converter(saved_model_dir: str, key: Optional[str] = None
              ) -> tf.lite.TFLiteConverter:
  """A converter of the signature ``key`` (default: ``signature_key``);
  without optimizations it converts to a float32 .tflite.

  The metadata-vector and image-only signatures of a model with metadata
  are converted as a concrete function held by a module of its own:
  converted from the SavedModel, the .tflite would carry the SavedModel's
  initializer, a subgraph filling the string lookup tables of
  ``serving_images`` (HASHTABLE ops) that these signatures never read.
  Their inputs are then ``images`` (0) and ``metadata`` (1; none for the
  image-only one), with no signature def.

  The image-only file is the metadata-vector function traced for one image
  with ``metadata_vector.MISSING`` as a constant (what the image-only
  signature computes; the parity gate compares the two): the signature
  tiles that vector to its batch size, a shape the .tflite would compute
  at run time, and XNNPACK does not take a graph with such a dynamic-sized
  tensor (measured: 6.0 ms per image instead of 1.6 ms for the int8 file).
  """
  key = key or signature_key(saved_model_dir)
  if key not in (features.METADATA_VECTOR_SIGNATURE,
                 features.IMAGE_ONLY_SIGNATURE):
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                    signature_keys=[key])
  loaded = tf.saved_model.load(saved_model_dir)
  function = loaded.signatures[features.METADATA_VECTOR_SIGNATURE]
  if key == features.IMAGE_ONLY_SIGNATURE:
    with_metadata = function
    image_spec = with_metadata.structured_input_signature[1]['images']

    @tf.function(input_signature=[tf.TensorSpec(
        [1] + image_spec.shape.as_list()[1:], tf.float32, name='images')])
    def image_only(images):
      return with_metadata(images=images, **{
          features.METADATA_VECTOR_KEY: tf.constant(
              metadata_vector.MISSING[None])})
    function = image_only.get_concrete_function()
  holder = tf.Module()
  holder.function = function
  result = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
  # The variables the function reads belong to ``loaded``: kept alive as
  # long as the converter.
  result.skinlesion_saved_model = loaded
  return result


def _float_input(calibrated: bytes, position: int) -> bytes:
  """The calibrated model with input ``position``'s recorded range dropped.

  The quantizer turns every input with a range into a uint8 input; without
  one, the metadata vector (read by the float FULLY_CONNECTED layers of the
  metadata MLP) stays a float32 input.
  """
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
  subgraph = model.subgraphs[0]
  subgraph.tensors[subgraph.inputs[position]].quantization = None
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_float16(saved_model_dir: str, key: Optional[str] = None) -> bytes:
  """float16 weights, float32 input in [0, 1] and float32 probabilities
  (``key``: the signature, default ``signature_key``)."""
  float16 = converter(saved_model_dir, key)
  float16.optimizations = [tf.lite.Optimize.DEFAULT]
  float16.target_spec.supported_types = [tf.float16]
  return float16.convert()


def _with_full_pixel_range(images: Sequence[np.ndarray]) -> list:
  """Copies of the images; the first one's two corner pixels set to 0 and 1.

  The converter quantizes the input tensor over the range it saw during
  calibration.  Images that never reach pure black or white would give an
  input scale other than 1/255, and the Task Library (which feeds raw uint8
  pixels) would then feed the model the wrong values.  Two pixels of one
  calibration image pin the range to [0, 1]; their effect on the other
  tensors' ranges is negligible.
  """
  out = [np.array(x, np.float32, copy=True) for x in images]
  out[0][0, 0, :] = 0.0
  out[0][-1, -1, :] = 1.0
  return out


# Ops left in float inside the otherwise integer model (selective float
# fallback, issue 16; benchmarks/int8_error.py measured the choice on the
# eval split).  The single uint8 image input and its 1/255 scale stay.
DEFAULT_FLOAT_OPS: Tuple[str, ...] = ('SOFTMAX',)
# The earlier design, every Dense layer float as well (benchmarks compare
# against it): the same parity on the real-data model's eval split, 0.33x
# instead of 0.29x the float32 file (BENCHMARKS.md, "int8 of the classifier
# head").
FLOAT_HEAD_OPS: Tuple[str, ...] = ('FULLY_CONNECTED', 'SOFTMAX')
# Keras layers whose ops stay float, by layer name: colour constancy and the
# backbone's input scaling (why: models/quantization_aware.py, which
# simulates the same file), and the output layer (the classifier's last
# Dense, whose bias correct_head_bias corrects).  The input stays uint8 at
# 1/255.
DEFAULT_FLOAT_LAYERS: Tuple[str, ...] = (quantization_aware.FLOAT_LAYERS +
                                         (registry.OUTPUT_LAYER,))


def layer_nodes(calibrated: bytes, layers: Sequence[str]) -> List[str]:
  """The output tensor names of the ops that the Keras layers named in
  ``layers`` became (a tensor is named by its layer's scope, e.g.
  ``model_1/color_constancy_1/Mean``), for quantize_calibrated's
  ``float_nodes``."""
  if not layers:
    return []
  scope = re.compile(r'(^|/)(%s)(_\d+)?/' % '|'.join(map(re.escape, layers)))
  interpreter = tf.lite.Interpreter(model_content=calibrated)
  names = {t['index']: t['name'] for t in interpreter.get_tensor_details()}
  return sorted({names[i] for op in interpreter._get_ops_details()  # pylint: disable=protected-access
                 for i in op['outputs'] if scope.search(names[i])})


def calibrate(saved_model_dir: str,
              representative_images: Iterable[np.ndarray],
              representative_metadata: Optional[Iterable[np.ndarray]] = None,
              key: Optional[str] = None) -> bytes:
  """The float model with activation ranges from the images (not quantized).

  ``representative_metadata``: for a model with metadata, each image's
  encoded metadata (float32 [metadata_vector.SIZE]), in image order; None
  for an image-only model (and the image-only signature).  ``key``: the
  signature (default ``signature_key``).

  Raises:
    ValueError: without representative images, or when the metadata vectors
      are missing for a model with metadata (or given to one without).
  """
  images = list(representative_images)
  if not images:
    raise ValueError('int8 conversion needs at least one representative image')
  images = _with_full_pixel_range(images)
  key = key or signature_key(saved_model_dir)
  vectors = (None if representative_metadata is None else
             [np.asarray(v, np.float32) for v in representative_metadata])
  if (key == features.METADATA_VECTOR_SIGNATURE) != (vectors is not None):
    raise ValueError(
        f'{key} takes representative metadata vectors only for a model with '
        f'metadata; got {"none" if vectors is None else len(vectors)}')
  if vectors is not None and len(vectors) != len(images):
    raise ValueError(f'{len(vectors)} representative metadata vectors for '
                     f'{len(images)} images')

  def representative_dataset():
    # In input order (images, then metadata: see ``converter``).
    for i, image in enumerate(images):
      yield [image[None]] + ([] if vectors is None else [vectors[i][None]])

  calibrating = converter(saved_model_dir, key)
  calibrating.optimizations = [tf.lite.Optimize.DEFAULT]
  calibrating.representative_dataset = representative_dataset
  # What tf.lite.experimental.QuantizationDebugger does too: calibrate, then
  # quantize with some ops denylisted (kept in float).
  calibrating._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = calibrating.convert()
  _, vector = input_tensors(calibrated)
  return calibrated if vector is None else _float_input(calibrated,
                                                        vector['position'])


def quantize_calibrated(calibrated: bytes, float_ops: Sequence[str] = (),
                        debug: bool = False,
                        float_nodes: Sequence[str] = ()) -> bytes:
  """int8 weights and activations, uint8 input and float32 output, except
  the ops named in ``float_ops`` (TFLite builtin names) and the nodes named
  in ``float_nodes`` (output tensor names, as the QuantizationDebugger's
  layer statistics list them), which stay float.

  ``debug``: instrumented with whole-model numeric verification (for
  tf.lite.experimental.QuantizationDebugger; float input, not for release).
  """
  if debug:
    return tflite_convert.mlir_quantize(
        calibrated, fully_quantize=True, enable_numeric_verify=True,
        enable_whole_model_verify=True, denylisted_ops=list(float_ops),
        denylisted_nodes=list(float_nodes))
  buffer = tflite_convert.mlir_quantize(
      calibrated, input_data_type=tf.uint8, output_data_type=tf.float32,
      denylisted_ops=list(float_ops) or None,
      denylisted_nodes=list(float_nodes) or None)
  image, vector = input_tensors(buffer)
  scale, zero_point = image['quantization']
  if (zero_point != 0 or
      abs(scale - _PIXEL_SCALE) > _PIXEL_SCALE_TOLERANCE * _PIXEL_SCALE):
    raise ValueError(
        f'int8 input quantized with scale {scale}, zero point {zero_point}; '
        'expected 1/255 and 0 (raw pixels)')
  if vector is not None and vector['dtype'] != np.float32:
    raise ValueError(f'the metadata input became {vector["dtype"]}; it must '
                     'stay float32 (docs/android.md)')
  return buffer


def as_pixels(images: Sequence[np.ndarray]) -> np.ndarray:
  """Float images in [0, 1] (k / 255 values, as representative_images
  gives) -> the uint8 pixels [N, S, S, 3] an app feeds the int8 file."""
  return np.stack([np.round(np.asarray(x) * 255).astype(np.uint8)
                   for x in images])


def reference_probabilities(saved_model_dir: str,
                            images: Sequence[np.ndarray],
                            metadata: Optional[Sequence[np.ndarray]] = None,
                            batch_size: int = 64,
                            key: Optional[str] = None) -> np.ndarray:
  """The SavedModel's probabilities through the signature the .tflite files
  are converted from (``key``, default ``signature_key``): float32 images
  [S, S, 3] in [0, 1] and, for the metadata-vector signature, their encoded
  metadata vectors."""
  return signature_probabilities(tf.saved_model.load(saved_model_dir),
                                 key or signature_key(saved_model_dir),
                                 images, metadata, batch_size)


def signature_probabilities(loaded, key: str, images: Sequence[np.ndarray],
                            metadata: Optional[Sequence[np.ndarray]] = None,
                            batch_size: int = 64) -> np.ndarray:
  """reference_probabilities of a loaded SavedModel's signature ``key``."""
  function = loaded.signatures[key]
  images = np.asarray(images, np.float32)
  out = []
  for start in range(0, len(images), batch_size):
    inputs = {'images': tf.constant(images[start:start + batch_size])}
    if key == features.METADATA_VECTOR_SIGNATURE:
      inputs[features.METADATA_VECTOR_KEY] = tf.constant(
          np.asarray(metadata[start:start + batch_size], np.float32))
    out.append(function(**inputs)[features.PREDICTION_KEY].numpy())
  return np.concatenate(out)


def head_op(model):
  """The classifier's last FULLY_CONNECTED (the op that feeds the output
  SOFTMAX) of a flatbuffer object, with float32 weights.

  Raises:
    ValueError: no float FULLY_CONNECTED feeds the softmax (an int8 head,
      or another architecture).
  """
  subgraph = model.subgraphs[0]
  codes = [max(c.builtinCode, c.deprecatedBuiltinCode)
           for c in model.operatorCodes]
  producer = {out: op for op in subgraph.operators for out in op.outputs}
  softmax = [op for op in subgraph.operators
             if codes[op.opcodeIndex] == schema_fb.BuiltinOperator.SOFTMAX]
  head = producer.get(softmax[-1].inputs[0]) if softmax else None
  if (head is None or
      codes[head.opcodeIndex] != schema_fb.BuiltinOperator.FULLY_CONNECTED):
    raise ValueError('no FULLY_CONNECTED feeds the softmax')
  if subgraph.tensors[head.inputs[1]].type != schema_fb.TensorType.FLOAT32:
    raise ValueError('the classifier output layer is quantized; bias '
                     'correction needs it in float (DEFAULT_FLOAT_LAYERS)')
  return head


def head_bias(model, create: bool = False) -> np.ndarray:
  """The float32 bias of the classifier's last FULLY_CONNECTED (the op that
  feeds the output SOFTMAX) in a flatbuffer object; a view into its buffer.

  ``create``: give a head without a bias (the converter drops an all-zero
  one) a zero bias of its own.

  Raises:
    ValueError: no float FULLY_CONNECTED feeds the softmax (an int8 head,
      or another architecture), or it has no bias and ``create`` is False.
  """
  subgraph = model.subgraphs[0]
  head = head_op(model)
  weights = subgraph.tensors[head.inputs[1]]
  if len(head.inputs) < 3 or head.inputs[2] < 0:
    if not create:
      raise ValueError('the classifier head has no bias')
    classes = int(weights.shape[0])
    buffer = flatbuffer_utils.schema_fb.BufferT()
    buffer.data = np.zeros(classes * 4, np.uint8)
    model.buffers.append(buffer)
    tensor = flatbuffer_utils.schema_fb.TensorT()
    tensor.shape = np.array([classes], np.int32)
    tensor.type = schema_fb.TensorType.FLOAT32
    tensor.buffer = len(model.buffers) - 1
    tensor.name = b'head_bias'
    subgraph.tensors.append(tensor)
    inputs = list(head.inputs) + [-1] * (3 - len(head.inputs))
    inputs[2] = len(subgraph.tensors) - 1
    head.inputs = np.array(inputs, np.int32)
  bias = subgraph.tensors[head.inputs[2]]
  return model.buffers[bias.buffer].data.view(np.float32)


def correct_head_bias(buffer: bytes, reference: np.ndarray,
                      pixels: np.ndarray,
                      metadata: Optional[np.ndarray] = None,
                      iterations: int = 2) -> Tuple[bytes, np.ndarray]:
  """Last-layer bias correction of a quantized model with a float head.

  Quantization shifts the mean of the logits the body hands the head (on
  HAM10000 it moved decisions toward one class, BENCHMARKS.md).  With
  ``reference`` the SavedModel's probabilities on the calibration images
  ``pixels`` (uint8 [N, S, S, 3]; ``metadata`` their vectors for a model
  with metadata), each class's bias gets the mean of log p_reference - log
  p_quantized over those images, so the quantized logits match the float
  ones on average (a shift common to all classes cancels in the softmax);
  ``iterations`` rounds, since the softmax's normalizer moves too.

  Returns:
    (the corrected flatbuffer, the total shift added to each class's bias).
  """
  reference = np.asarray(reference, np.float64)
  total = np.zeros(reference.shape[1])
  for _ in range(iterations):
    quantized = predict(buffer, pixels, metadata).astype(np.float64)
    shift = np.mean(np.log(np.clip(reference, 1e-7, 1.0)) -
                    np.log(np.clip(quantized, 1e-7, 1.0)), axis=0)
    shift -= shift.mean()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
    bias = head_bias(model, create=True)
    if bias.shape != shift.shape:
      raise ValueError(f'head bias of shape {bias.shape} for '
                       f'{shift.shape[0]} classes')
    bias += shift.astype(np.float32)
    total += shift
    buffer = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
  return buffer, total


def convert_int8(saved_model_dir: str,
                 representative_images: Iterable[np.ndarray],
                 float_ops: Sequence[str] = DEFAULT_FLOAT_OPS,
                 representative_metadata: Optional[Iterable[np.ndarray]] = None,
                 bias_correction: Optional[bool] = None,
                 float_layers: Sequence[str] = DEFAULT_FLOAT_LAYERS,
                 key: Optional[str] = None) -> bytes:
  """Integer conversion with uint8 input and float32 output.

  Args:
    saved_model_dir: an ExportArchive SavedModel with the raw-image signature.
    representative_images: float32 [S, S, 3] arrays in [0, 1] (calibration).
    float_ops: TFLite builtin ops kept in float (default: the softmax,
      DEFAULT_FLOAT_OPS; ``()`` with ``float_layers=()``: fully integer).
    representative_metadata: a model with metadata: each image's encoded
      metadata (models/metadata_vector.py), in image order.
    bias_correction: correct the output layer's bias on the representative
      images (correct_head_bias, against the SavedModel's probabilities on
      them); None: whenever the output layer stays float (float_ops holds
      FULLY_CONNECTED or float_layers the output layer).
    float_layers: Keras layers (by name) whose ops stay float
      (DEFAULT_FLOAT_LAYERS; absent layers are ignored).
    key: the signature converted (default ``signature_key``).

  Returns:
    The .tflite flatbuffer (no metadata yet).

  Raises:
    ValueError: without representative images, when the converted input
      is not quantized as raw pixels (scale 1/255, zero point 0), or
      bias_correction=True with the output layer quantized.
  """
  images = list(representative_images)
  metadata = (None if representative_metadata is None else
              [np.asarray(v, np.float32) for v in representative_metadata])
  calibrated = calibrate(saved_model_dir, images, metadata, key)
  buffer = quantize_calibrated(calibrated, float_ops,
                               float_nodes=layer_nodes(calibrated,
                                                       float_layers))
  if bias_correction is None:
    bias_correction = ('FULLY_CONNECTED' in float_ops or
                       registry.OUTPUT_LAYER in float_layers)
  if not bias_correction:
    return buffer
  reference = reference_probabilities(saved_model_dir, images, metadata,
                                      key=key)
  pixels = as_pixels(images)
  buffer, shift = correct_head_bias(
      buffer, reference, pixels,
      None if metadata is None else np.stack(metadata))
  logging.info('int8 head bias corrected on %d images: shift %s', len(images),
               np.round(shift, 4).tolist())
  return buffer


def convert(saved_model_dir: str, fmt: str,
            representative_images: Optional[Iterable[np.ndarray]] = None,
            representative_metadata: Optional[Iterable[np.ndarray]] = None
            ) -> bytes:
  """Converts to one of FORMATS or its image-only variant (``image_only``;
  a model with metadata only).  int8 needs representative images, and for
  the two-input file of a model with metadata their encoded metadata (the
  image-only variant takes none)."""
  base, variant = base_format(fmt)
  key = signature_key(saved_model_dir, image_only=variant)
  if variant and representative_metadata is not None:
    raise ValueError(f'{fmt} takes no metadata: it is converted with every '
                     'metadata value missing')
  if base == FLOAT16:
    return convert_float16(saved_model_dir, key)
  return convert_int8(saved_model_dir, representative_images or [],
                      representative_metadata=representative_metadata,
                      key=key)


class _InputImageMd(metadata_info.InputImageTensorMd):
  """Input image metadata that also records the image size."""

  def __init__(self, image_size: int, **kwargs):
    super().__init__(**kwargs)
    self.image_size = image_size

  def create_metadata(self) -> metadata_fb.TensorMetadataT:
    tensor_metadata = super().create_metadata()
    size = metadata_fb.ImageSizeT()
    size.width = size.height = self.image_size
    tensor_metadata.content.contentProperties.defaultSize = size
    return tensor_metadata


def input_tensors(model_buffer: bytes
            ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
  """The image input's details and the metadata vector's (None: an
  image-only model); each with ``position``, its place among the inputs."""
  interpreter = tf.lite.Interpreter(model_content=model_buffer)
  image, vector = None, None
  for position, details in enumerate(interpreter.get_input_details()):
    details = {**details, 'position': position}
    if len(details['shape']) == 4 and image is None:
      image = details
    elif (len(details['shape']) == 2 and vector is None and
          int(details['shape'][1]) == metadata_vector.SIZE):
      vector = details
    else:
      raise ValueError(f'unexpected input tensor {details["name"]} of shape '
                       f'{list(details["shape"])}')
  if image is None:
    raise ValueError('the model has no [1, S, S, 3] image input')
  return image, vector


def metadata_input_description() -> str:
  """The ``metadata`` input's contract, slot by slot (TFLite metadata)."""
  return (f'float32 [1, {metadata_vector.SIZE}]: the patient metadata '
          'encoded as models/metadata_vector.py lays it out (one-hot slots '
          'are 1 or 0; strings match exactly). Slots: '
          + metadata_vector.describe() + '.')


def add_metadata(model_buffer: bytes, labels: Sequence[str], *, name: str,
                 description: str, version: str, author: str, licenses: str,
                 label_descriptions: Optional[Sequence[str]] = None) -> bytes:
  """Attaches image-classifier metadata (labels, normalization, names).

  Args:
    model_buffer: a converted model with one [1, S, S, 3] image input (and,
      for a model with metadata, the [1, metadata_vector.SIZE] ``metadata``
      input) and one [1, len(labels)] float32 probabilities output.
    labels: class names in output order; packed as ``labels.txt``.
    name: model name.
    description: what the model is for (the input contract is appended).
    version: model version.
    author: author.
    licenses: licence text.
    label_descriptions: human-readable class names for the output description
      (default: the labels).

  Returns:
    The model with metadata.
  """
  image, vector = input_tensors(model_buffer)
  input_type = writer_utils.get_input_tensor_types(model_buffer)[
      image['position']]
  output_type = writer_utils.get_output_tensor_types(model_buffer)[0]
  shape = [int(x) for x in image['shape']]
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise ValueError(f'expected a [1, S, S, 3] image input, got {shape}')
  image_size = shape[1]
  uint8_input = input_type == schema_fb.TensorType.UINT8
  if not uint8_input and input_type != schema_fb.TensorType.FLOAT32:
    raise ValueError('the Task Library and MediaPipe take uint8 or float32 '
                     f'image inputs; this model takes tensor type {input_type}')
  # uint8 input quantized with scale 1/255, zero point 0: raw pixels go in
  # as they are (mean 0, std 1).  A float input expects [0, 1]: std 255.
  norm_std = [1.0] if uint8_input else [255.0]
  pixels = ('uint8 pixel values 0-255 as they are' if uint8_input else
            'float32 pixel values / 255 (range 0-1)')
  input_contract = (f'RGB image resized (bilinear, whole image, aspect ratio '
                    f'not kept) to {image_size}x{image_size}; {pixels}.')
  inputs = {image['position']: _InputImageMd(
      image_size=image_size, name='image', description=input_contract,
      norm_mean=[0.0], norm_std=norm_std,
      color_space_type=metadata_fb.ColorSpaceType.RGB,
      tensor_type=input_type)}
  model_contract = f'Input: {input_contract}'
  if vector is not None:
    inputs[vector['position']] = metadata_info.TensorMd(
        name=features.METADATA_VECTOR_KEY,
        description=metadata_input_description())
    model_contract = (f'Inputs: image: {input_contract} metadata: float32 '
                      f'[1, {metadata_vector.SIZE}] encoded patient metadata '
                      '(layout in its tensor description).')
  with tempfile.TemporaryDirectory() as tmp:
    label_file = os.path.join(tmp, LABELS_FILE)
    with open(label_file, 'w', encoding='utf-8') as f:
      f.write('\n'.join(labels) + '\n')
    # What image_classifier.MetadataWriter writes, with one tensor entry per
    # input.
    writer = metadata_writer.MetadataWriter.create_from_metadata_info(
        model_buffer=bytearray(model_buffer),
        general_md=metadata_info.GeneralMd(
            name=name, version=version,
            description=f'{description} {model_contract}',
            author=author, licenses=licenses),
        input_md=[inputs[i] for i in sorted(inputs)],
        output_md=[metadata_info.ClassificationTensorMd(
            name='probabilities',
            description=('Probability of each class (they sum to 1), in '
                         f'{LABELS_FILE} order: '
                         + ', '.join(label_descriptions or labels)),
            label_files=[metadata_info.LabelFileMd(file_path=label_file)],
            tensor_type=output_type)],
        associated_files=[label_file])
    return bytes(writer.populate())


def read_metadata(model_buffer: bytes) -> Dict[str, Any]:
  """The model's metadata as JSON (what the Task Library reads)."""
  displayer = tflite_metadata.MetadataDisplayer.with_model_buffer(
      model_buffer)
  return json.loads(displayer.get_metadata_json())


def packed_labels(model_buffer: bytes) -> list:
  """The class names of the label file packed in the model, in order."""
  displayer = tflite_metadata.MetadataDisplayer.with_model_buffer(
      model_buffer)
  return displayer.get_associated_file_buffer(LABELS_FILE).decode(
      'utf-8').splitlines()


def input_spec(model_buffer: bytes) -> Dict[str, Any]:
  """What an app must feed the model, from the tensors and their metadata.

  The image input's contract; for a model with metadata, ``metadata`` adds
  the vector input's tensor, dtype, shape and slot names.
  """
  details, vector = input_tensors(model_buffer)
  meta = read_metadata(model_buffer)
  tensor = meta['subgraph_metadata'][0]['input_tensor_metadata'][
      details['position']]
  norm = next((p['options'] for p in tensor.get('process_units', [])
               if p['options_type'] == 'NormalizationOptions'), None)
  scale, zero_point = details['quantization']
  return {
      'tensor': details['name'],
      'dtype': np.dtype(details['dtype']).name,
      'shape': [int(x) for x in details['shape']],
      'quantization': ({'scale': float(scale), 'zero_point': int(zero_point)}
                       if scale else None),
      'normalization': norm,
      'color_space': tensor['content']['content_properties']['color_space'],
      'resize': 'bilinear, whole image to the input size',
      **({} if vector is None else {features.METADATA_VECTOR_KEY: {
          'tensor': vector['name'],
          'dtype': np.dtype(vector['dtype']).name,
          'shape': [int(x) for x in vector['shape']],
          'slots': [slot for slot, _ in metadata_vector.SLOTS]}}),
  }


def model_input(pixels: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """uint8 pixels -> what the Task Library feeds a model of that input dtype.

  uint8 inputs get the pixels as they are (the int8 model's input is
  quantized as raw pixels); float32 inputs get (pixel - 0) / 255, the
  normalization its metadata declares.
  """
  if np.dtype(dtype) == np.uint8:
    return np.asarray(pixels, np.uint8)
  if np.dtype(dtype) == np.float32:
    return np.asarray(pixels, np.float32) / 255.0
  raise ValueError(f'unsupported input dtype {dtype}')


def predict(model_buffer: bytes, pixels: np.ndarray,
            metadata: Optional[np.ndarray] = None,
            num_threads: int = 1) -> np.ndarray:
  """Probabilities [N, C] for uint8 images [N, S, S, 3], one invoke each.

  ``metadata``: for a model with metadata, float32 [N, metadata_vector.SIZE]
  (metadata_vector.encode_batch of each image's metadata); None otherwise.

  Raises:
    ValueError: metadata missing for a model that takes it, given to one
      that does not, or not one vector per image.
  """
  interpreter = tf.lite.Interpreter(model_content=model_buffer,
                                    num_threads=num_threads)
  interpreter.allocate_tensors()
  inp, vector = input_tensors(model_buffer)
  if (vector is None) != (metadata is None):
    raise ValueError('metadata vectors go with a model that has a metadata '
                     f'input, and only with it (model: '
                     f'{"none" if vector is None else "one"}, given: '
                     f'{"none" if metadata is None else "some"})')
  if metadata is not None and np.shape(metadata) != (len(pixels),
                                                     metadata_vector.SIZE):
    raise ValueError(f'metadata of shape {np.shape(metadata)} for '
                     f'{len(pixels)} images; expected [N, '
                     f'{metadata_vector.SIZE}]')
  out = interpreter.get_output_details()[0]
  results = []
  for i, image in enumerate(pixels):
    interpreter.set_tensor(inp['index'],
                           model_input(image[None], inp['dtype']))
    if vector is not None:
      interpreter.set_tensor(vector['index'],
                             np.asarray(metadata[i:i + 1], np.float32))
    interpreter.invoke()
    results.append(np.array(interpreter.get_tensor(out['index'])[0],
                            np.float32))
  if not results:
    return np.zeros((0, int(out['shape'][-1])), np.float32)
  return np.stack(results)
