"""SavedModel (raw-image signature) -> int8 TFLite with TFLite metadata.

Conversion reads the ``serving_images`` signature of a Keras 3
``ExportArchive`` SavedModel (the only path that converts with TF 2.16 and
Keras 3, see ../shared/STACK.md).  The int8 model is fully integer inside,
takes uint8 pixels (quantization scale 1/255, zero point 0, i.e. the raw
pixel values of the resized image) and returns float32 probabilities
(dequantized on the way out).  Metadata (tflite-support writers) carries the
labels, the normalization (mean 0, std 1 on uint8 input), names and licence,
so the Task Library and MediaPipe need no pre-processing code of the app.
"""

import os
import tempfile
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
# Imported module by module: `import tflite_support` fails in a process that
# also has TensorFlow (see ../shared/STACK.md).
from tensorflow_lite_support.metadata import metadata_schema_py_generated as metadata_fb
from tensorflow_lite_support.metadata import schema_py_generated as schema_fb
from tensorflow_lite_support.metadata.python.metadata_writers import image_classifier
from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info
from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils

from models import features


def convert_int8(saved_model_dir: str,
                 representative_images: Iterable[np.ndarray]) -> bytes:
  """Full-integer int8 conversion with uint8 input and float32 output.

  Args:
    saved_model_dir: an ExportArchive SavedModel with the raw-image signature.
    representative_images: float32 [S, S, 3] arrays in [0, 1] (calibration).
  """
  images = [np.asarray(x, np.float32) for x in representative_images]
  if not images:
    raise ValueError('int8 conversion needs at least one representative image')

  def representative_dataset():
    for image in images:
      yield [image[None]]

  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[features.IMAGE_SIGNATURE])
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative_dataset
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.uint8
  converter.inference_output_type = tf.float32
  return converter.convert()


def add_metadata(model_buffer: bytes, labels: Sequence[str], *, name: str,
                 description: str, version: str, author: str, licenses: str,
                 label_descriptions: Optional[Sequence[str]] = None) -> bytes:
  """Attaches image-classifier metadata (labels, normalization, names)."""
  input_type = writer_utils.get_input_tensor_types(model_buffer)[0]
  output_type = writer_utils.get_output_tensor_types(model_buffer)[0]
  uint8_input = input_type == schema_fb.TensorType.UINT8
  # uint8 input quantized with scale 1/255, zero point 0: raw pixels go in
  # as they are (mean 0, std 1).  A float input expects [0, 1]: std 255.
  norm_std = [1.0] if uint8_input else [255.0]
  with tempfile.TemporaryDirectory() as tmp:
    label_file = os.path.join(tmp, 'labels.txt')
    with open(label_file, 'w', encoding='utf-8') as f:
      f.write('\n'.join(labels) + '\n')
    writer = image_classifier.MetadataWriter.create_from_metadata_info(
        model_buffer=bytearray(model_buffer),
        general_md=metadata_info.GeneralMd(
            name=name, version=version, description=description,
            author=author, licenses=licenses),
        input_md=metadata_info.InputImageTensorMd(
            name='image',
            description=('RGB image resized to the input size; uint8 pixel '
                         'values (0-255) for the int8 model.'),
            norm_mean=[0.0], norm_std=norm_std,
            color_space_type=metadata_fb.ColorSpaceType.RGB,
            tensor_type=input_type),
        output_md=metadata_info.ClassificationTensorMd(
            name='probabilities',
            description=('Probability of each class, in labels.txt order: '
                         + ', '.join(label_descriptions or labels)),
            label_files=[metadata_info.LabelFileMd(file_path=label_file)],
            tensor_type=output_type))
    return bytes(writer.populate())

