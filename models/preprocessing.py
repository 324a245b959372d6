"""Image decoding and tf.Example parsing, shared by training and serving.

The canonical preprocessing is: decode the JPEG as RGB, resize (bilinear) to
``image_size`` x ``image_size``, round to uint8, scale to [0, 1].  The
training input, the tf.Example serving signature and the raw-image signature
(whose callers, e.g. the TFLite Task Library, resize to uint8 themselves and
normalize with mean 0 / std 255) all see exactly this.
"""

import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from models import features


def decode_and_resize(jpeg: tf.Tensor, image_size: int) -> tf.Tensor:
  """One encoded image (scalar string) -> uint8 [image_size, image_size, 3]."""
  image = tf.io.decode_jpeg(jpeg, channels=3)
  image = tf.image.resize(image, [image_size, image_size], method='bilinear')
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def to_model_input(images_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 pixels -> float32 in [0, 1], the models' input."""
  return tf.cast(images_uint8, tf.float32) / 255.0


def decode_batch(jpegs: tf.Tensor, image_size: int) -> tf.Tensor:
  """A batch of encoded images [N] -> float32 [N, S, S, 3] in [0, 1]."""
  images = tf.map_fn(
      lambda jpeg: decode_and_resize(jpeg, image_size), jpegs,
      fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
  return to_model_input(images)


def image_label_spec() -> Dict[str, tf.io.FixedLenFeature]:
  return {
      features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
      features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
  }


def image_spec() -> Dict[str, tf.io.FixedLenFeature]:
  return {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}


def metadata_spec() -> Dict[str, tf.io.FixedLenFeature]:
  """Patient metadata for the mixed_input model.  A missing age parses as
  NaN (the model turns it into a missing-value indicator); a missing sex or
  localization as 'unknown' (the vocabularies' other-value bucket)."""
  return {
      features.AGE_KEY: tf.io.FixedLenFeature([], tf.float32,
                                              default_value=float('nan')),
      features.SEX_KEY: tf.io.FixedLenFeature([], tf.string,
                                              default_value=features.UNKNOWN),
      features.LOCALIZATION_KEY: tf.io.FixedLenFeature(
          [], tf.string, default_value=features.UNKNOWN),
  }


def metadata_inputs(parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Parsed metadata (scalars or [N]) -> the model's [..., 1] inputs."""
  return {key: tf.expand_dims(parsed[key], -1) for key in metadata_spec()}


def list_files(file_patterns: Sequence[str]) -> list:
  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'no TFRecord files match {list(file_patterns)}')
  return files


def read_label_file(path: str) -> list:
  """The names in a label file, one per line (blank lines skipped)."""
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f if line.strip()]


def read_labels(file_patterns: Sequence[str]) -> list:
  """The label list of the Examples artifact that holds these split files.

  Split files live at ``<examples uri>/Split-<name>/*``; ingestion writes the
  label list once, as ``<examples uri>/labels.txt``.
  """
  split_dir = os.path.dirname(file_patterns[0].rstrip('/'))
  path = os.path.join(os.path.dirname(split_dir), features.LABELS_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{path} not found: examples must come from the '
                            'ImageExampleGen, which writes the label list')
  labels = read_label_file(path)
  if len(labels) < 2:
    raise ValueError(f'{path} lists fewer than two labels: {labels}')
  return labels


def read_examples(file_patterns: Sequence[str]) -> tf.data.Dataset:
  """Serialized tf.Examples from ExampleGen's GZIP TFRecords, in file order."""
  return tf.data.TFRecordDataset(list_files(file_patterns),
                                 compression_type='GZIP')


def sample_examples(file_patterns: Sequence[str], count: int,
                    seed: int) -> tf.data.Dataset:
  """A seeded random sample of ``count`` serialized examples (all of them
  when the files hold fewer), in file order: the int8 calibration set
  (mobile_export/data.py), which the Trainer's int8_qat phase calibrates on
  too.  The positions are drawn by numpy from ``seed`` alone, uniformly over
  the whole split, so the sample does not move with TensorFlow's global seed
  (keras.utils.set_random_seed) and a process that runs only MobileExporter
  draws the images the Trainer's process drew.  The records are read twice
  (a count, then the sample); only the sampled ones are decoded."""
  if count <= 0:
    raise ValueError(f'representative image count must be > 0, got {count}')
  total = int(read_examples(file_patterns).reduce(
      tf.constant(0, tf.int64), lambda n, _: n + 1))
  if total == 0:
    raise ValueError(f'no examples in {list(file_patterns)} to sample from')
  chosen = np.zeros(total, bool)
  chosen[np.random.default_rng(seed).choice(total, size=min(count, total),
                                            replace=False)] = True
  chosen = tf.constant(chosen)
  return (read_examples(file_patterns).enumerate()
          .filter(lambda position, _: tf.gather(chosen, position))
          .map(lambda _, serialized: serialized))


def image_label_dataset(file_patterns: Sequence[str],
                        image_size: int) -> tf.data.Dataset:
  """(uint8 image, label) pairs, deterministic order."""
  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, image_label_spec())
    return (decode_and_resize(ex[features.IMAGE_KEY], image_size),
            ex[features.LABEL_KEY])
  return read_examples(file_patterns).map(
      parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def label_counts(file_patterns: Sequence[str], num_classes: int) -> list:
  """Examples per class index (labels only: no image is decoded)."""
  spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  counts = [0] * num_classes
  labels = read_examples(file_patterns).batch(1024).map(
      lambda s: tf.io.parse_example(s, spec)[features.LABEL_KEY])
  for batch in labels.as_numpy_iterator():
    for label in batch:
      if not 0 <= label < num_classes:
        raise ValueError(f'label {label} outside [0, {num_classes})')
      counts[label] += 1
  return counts
