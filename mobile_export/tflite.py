"""SavedModel (raw-image signature) -> float16 / int8 TFLite with metadata.

Conversion reads the ``serving_images`` signature (the single-view
``serving_images_single_view`` when the model was exported with test-time
augmentation) of a Keras 3 ``ExportArchive`` SavedModel (the only path that converts with TF 2.16 and
Keras 3, see ../shared/STACK.md).  Two formats:

* ``float16``: weights stored as float16, float32 input in [0, 1] and float32
  probabilities; about half the size of the float32 model, same arithmetic.
* ``int8``: integer inside except the classifier head (Dense + softmax stay
  float, DEFAULT_FLOAT_OPS: an int8 softmax's 1/256 steps made exact ties,
  BENCHMARKS.md, issue 16); takes uint8 pixels (input quantization scale
  1/255, zero point 0, i.e. the raw pixel values of the resized image) and
  returns float32 probabilities.

Metadata (tflite-support writers) carries the model name, description,
version, author, licence, the label file, the input normalization matching
the input type (float: mean 0, std 255; uint8: mean 0, std 1), the colour
space and image size, and tensor descriptions, so the Task Library and
MediaPipe need no pre-processing code of the app.
"""

import json
import os
import tempfile
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert
# Imported module by module: `import tflite_support` fails in a process that
# also has TensorFlow (see ../shared/STACK.md).
from tensorflow_lite_support.metadata import metadata_schema_py_generated as metadata_fb
from tensorflow_lite_support.metadata import schema_py_generated as schema_fb
from tensorflow_lite_support.metadata.python import metadata as tflite_metadata
from tensorflow_lite_support.metadata.python.metadata_writers import image_classifier
from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info
from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils

from models import features

FLOAT16 = 'float16'
INT8 = 'int8'
FORMATS = (FLOAT16, INT8)
LABELS_FILE = 'labels.txt'

# The int8 model's input must be quantized exactly as raw pixels (scale
# 1/255, zero point 0): the Task Library and MediaPipe copy uint8 pixels into
# a uint8 input as they are, whatever the metadata says.
_PIXEL_SCALE = 1.0 / 255.0
_PIXEL_SCALE_TOLERANCE = 1e-3  # relative


def file_name(fmt: str) -> str:
  """The file name of a format: ``model_float16.tflite``, ``model_int8.tflite``."""
  _check_format(fmt)
  return f'model_{fmt}.tflite'


def _check_format(fmt: str) -> None:
  if fmt not in FORMATS:
    raise ValueError(f'unknown TFLite format {fmt!r}; choose from {FORMATS}')


class MetadataInputsNotSupported(ValueError):
  """The model's image signature also takes patient metadata."""


def check_image_only(saved_model_dir: str) -> str:
  """The name of the signature the converter reads; refuses models whose
  ``serving_images`` signature takes more than the image (``mixed_input``:
  age, sex, localization).

  The converter reads the single-view image signature
  (``features.single_view_image_signature``): ``serving_images``, or, when
  the Trainer exported test-time augmentation, ``serving_images_single_view``
  (the plain model, one pass per image on the phone; the parity gate
  compares the .tflite with that same signature).

  Decision (docs/android.md): no TFLite export for them.  The Task Library
  and MediaPipe image classifiers feed exactly one image tensor, and the
  metadata path would need string inputs (sex, localization lookups), which
  TFLite builtins do not convert; an app would have to reimplement the
  one-hot encoding and the missing-age indicator by hand.  Use an
  image-only registry model for mobile.
  """
  loaded = tf.saved_model.load(saved_model_dir)
  name = features.single_view_image_signature(loaded.signatures)
  _, inputs = loaded.signatures[name].structured_input_signature
  extra = sorted(set(inputs) - {'images'})
  if extra:
    raise MetadataInputsNotSupported(
        f'no TFLite export for a model with metadata inputs {extra} (e.g. '
        'mixed_input): the Task Library / MediaPipe image classifiers take '
        'one image tensor and TFLite builtins cannot take the string '
        'metadata; use an image-only model (e.g. mobilenet_v2) for mobile, '
        'see docs/android.md')
  return name


def _converter(saved_model_dir: str) -> tf.lite.TFLiteConverter:
  return tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[check_image_only(saved_model_dir)])


def convert_float16(saved_model_dir: str) -> bytes:
  """float16 weights, float32 input in [0, 1] and float32 probabilities."""
  converter = _converter(saved_model_dir)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


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
DEFAULT_FLOAT_OPS: Tuple[str, ...] = ('FULLY_CONNECTED', 'SOFTMAX')


def calibrate(saved_model_dir: str,
              representative_images: Iterable[np.ndarray]) -> bytes:
  """The float model with activation ranges from the images (not quantized).

  Raises:
    ValueError: without representative images.
  """
  images = list(representative_images)
  if not images:
    raise ValueError('int8 conversion needs at least one representative image')
  images = _with_full_pixel_range(images)

  def representative_dataset():
    for image in images:
      yield [image[None]]

  converter = _converter(saved_model_dir)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative_dataset
  # What tf.lite.experimental.QuantizationDebugger does too: calibrate, then
  # quantize with some ops denylisted (kept in float).
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  return converter.convert()


def quantize_calibrated(calibrated: bytes, float_ops: Sequence[str] = (),
                        debug: bool = False) -> bytes:
  """int8 weights and activations, uint8 input and float32 output, except
  the ops named in ``float_ops`` (TFLite builtin names), which stay float.

  ``debug``: instrumented with whole-model numeric verification (for
  tf.lite.experimental.QuantizationDebugger; float input, not for release).
  """
  if debug:
    return tflite_convert.mlir_quantize(
        calibrated, fully_quantize=True, enable_numeric_verify=True,
        enable_whole_model_verify=True, denylisted_ops=list(float_ops))
  buffer = tflite_convert.mlir_quantize(
      calibrated, input_data_type=tf.uint8, output_data_type=tf.float32,
      denylisted_ops=list(float_ops) or None)
  scale, zero_point = _input_details(buffer)['quantization']
  if (zero_point != 0 or
      abs(scale - _PIXEL_SCALE) > _PIXEL_SCALE_TOLERANCE * _PIXEL_SCALE):
    raise ValueError(
        f'int8 input quantized with scale {scale}, zero point {zero_point}; '
        'expected 1/255 and 0 (raw pixels)')
  return buffer


def convert_int8(saved_model_dir: str,
                 representative_images: Iterable[np.ndarray],
                 float_ops: Sequence[str] = DEFAULT_FLOAT_OPS) -> bytes:
  """Integer conversion with uint8 input and float32 output.

  Args:
    saved_model_dir: an ExportArchive SavedModel with the raw-image signature.
    representative_images: float32 [S, S, 3] arrays in [0, 1] (calibration).
    float_ops: TFLite builtin ops kept in float (default: the classifier
      head, DEFAULT_FLOAT_OPS; ``()``: fully integer).

  Returns:
    The .tflite flatbuffer (no metadata yet).

  Raises:
    ValueError: without representative images, or when the converted input
      is not quantized as raw pixels (scale 1/255, zero point 0).
  """
  return quantize_calibrated(
      calibrate(saved_model_dir, representative_images), float_ops)


def convert(saved_model_dir: str, fmt: str,
            representative_images: Optional[Iterable[np.ndarray]] = None
            ) -> bytes:
  """Converts to one of FORMATS (int8 needs representative images)."""
  _check_format(fmt)
  if fmt == FLOAT16:
    return convert_float16(saved_model_dir)
  return convert_int8(saved_model_dir, representative_images or [])


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


def _input_details(model_buffer: bytes) -> Dict[str, Any]:
  interpreter = tf.lite.Interpreter(model_content=model_buffer)
  return interpreter.get_input_details()[0]


def add_metadata(model_buffer: bytes, labels: Sequence[str], *, name: str,
                 description: str, version: str, author: str, licenses: str,
                 label_descriptions: Optional[Sequence[str]] = None) -> bytes:
  """Attaches image-classifier metadata (labels, normalization, names).

  Args:
    model_buffer: a converted model with one [1, S, S, 3] image input and one
      [1, len(labels)] float32 probabilities output.
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
  input_type = writer_utils.get_input_tensor_types(model_buffer)[0]
  output_type = writer_utils.get_output_tensor_types(model_buffer)[0]
  shape = [int(x) for x in _input_details(model_buffer)['shape']]
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
  with tempfile.TemporaryDirectory() as tmp:
    label_file = os.path.join(tmp, LABELS_FILE)
    with open(label_file, 'w', encoding='utf-8') as f:
      f.write('\n'.join(labels) + '\n')
    writer = image_classifier.MetadataWriter.create_from_metadata_info(
        model_buffer=bytearray(model_buffer),
        general_md=metadata_info.GeneralMd(
            name=name, version=version,
            description=f'{description} Input: {input_contract}',
            author=author, licenses=licenses),
        input_md=_InputImageMd(
            image_size=image_size,
            name='image', description=input_contract,
            norm_mean=[0.0], norm_std=norm_std,
            color_space_type=metadata_fb.ColorSpaceType.RGB,
            tensor_type=input_type),
        output_md=metadata_info.ClassificationTensorMd(
            name='probabilities',
            description=('Probability of each class (they sum to 1), in '
                         f'{LABELS_FILE} order: '
                         + ', '.join(label_descriptions or labels)),
            label_files=[metadata_info.LabelFileMd(file_path=label_file)],
            tensor_type=output_type))
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
  """What an app must feed the model, from the tensor and its metadata."""
  details = _input_details(model_buffer)
  meta = read_metadata(model_buffer)
  tensor = meta['subgraph_metadata'][0]['input_tensor_metadata'][0]
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
            num_threads: int = 1) -> np.ndarray:
  """Probabilities [N, C] for uint8 images [N, S, S, 3], one invoke each."""
  interpreter = tf.lite.Interpreter(model_content=model_buffer,
                                    num_threads=num_threads)
  interpreter.allocate_tensors()
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  results = []
  for image in pixels:
    interpreter.set_tensor(inp['index'],
                           model_input(image[None], inp['dtype']))
    interpreter.invoke()
    results.append(np.array(interpreter.get_tensor(out['index'])[0],
                            np.float32))
  if not results:
    return np.zeros((0, int(out['shape'][-1])), np.float32)
  return np.stack(results)
