"""Images for calibration and parity, read from ExampleGen's TFRecords.

Both go through the canonical preprocessing (``models/preprocessing.py``:
decode, bilinear resize, round to uint8), so they are exactly what the
serving signatures and the mobile apps see.  For a model with metadata, the
same examples' raw metadata (``load_metadata``) and encoded vectors
(models/metadata_vector.py) come in the same order.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from models import features
from models import metadata_vector
from models import preprocessing


def _decode(serialized: tf.Tensor, image_size: int):
  example = tf.io.parse_single_example(serialized,
                                       preprocessing.image_label_spec())
  return (preprocessing.decode_and_resize(example[features.IMAGE_KEY],
                                          image_size),
          example[features.LABEL_KEY])


def load_images(file_patterns: Sequence[str], image_size: int
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Every example of the files: (uint8 [N, S, S, 3], int64 labels [N])."""
  dataset = preprocessing.read_examples(file_patterns).map(
      lambda s: _decode(s, image_size), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True).batch(256)
  pixels, labels = [], []
  for batch_pixels, batch_labels in dataset.as_numpy_iterator():
    pixels.append(batch_pixels)
    labels.append(batch_labels)
  if not pixels:
    return (np.zeros((0, image_size, image_size, 3), np.uint8),
            np.zeros((0,), np.int64))
  return np.concatenate(pixels), np.concatenate(labels)


def lesion_ids(file_patterns: Sequence[str]) -> np.ndarray:
  """Every example's lesion id, in load_images' order (its image id when it
  has none, or its position: an image without either is its own lesion)."""
  out = []
  for serialized in preprocessing.read_examples(file_patterns).as_numpy_iterator():
    feature = tf.train.Example.FromString(serialized).features.feature
    ids = [feature[key].bytes_list.value[0].decode()
           for key in (features.LESION_ID_KEY, features.IMAGE_ID_KEY)
           if key in feature and feature[key].bytes_list.value
           and feature[key].bytes_list.value[0]]
    out.append(ids[0] if ids else f'#{len(out)}')
  return np.asarray(out)


def _raw_metadata(serialized: np.ndarray) -> Dict[str, np.ndarray]:
  parsed = tf.io.parse_example(tf.constant(serialized),
                               preprocessing.metadata_spec())
  return {key: value.numpy() for key, value in parsed.items()}


def _concatenate(batches: List[Dict[str, np.ndarray]]
                 ) -> Dict[str, np.ndarray]:
  if not batches:
    return {features.AGE_KEY: np.zeros((0,), np.float32),
            features.SEX_KEY: np.zeros((0,), object),
            features.LOCALIZATION_KEY: np.zeros((0,), object)}
  return {key: np.concatenate([b[key] for b in batches])
          for key in batches[0]}


def load_metadata(file_patterns: Sequence[str]) -> Dict[str, np.ndarray]:
  """Every example's raw metadata, in load_images' order: ``age`` float32
  [N] (NaN: missing), ``sex`` and ``localization`` bytes [N] ('unknown' when
  missing), as the serving_images signature takes them."""
  return _concatenate([_raw_metadata(batch) for batch in
                       preprocessing.read_examples(file_patterns).batch(
                           1024).as_numpy_iterator()])


def encode_metadata(raw: Dict[str, np.ndarray]) -> np.ndarray:
  """load_metadata's arrays -> float32 [N, metadata_vector.SIZE]."""
  return metadata_vector.encode_batch(raw[features.AGE_KEY],
                                      raw[features.SEX_KEY],
                                      raw[features.LOCALIZATION_KEY])


def representative_images(file_patterns: Sequence[str], image_size: int,
                          count: int, seed: int) -> List[np.ndarray]:
  """A seeded random sample of ``count`` images, float32 [S, S, 3] in [0, 1]
  (preprocessing.sample_examples: only the sampled images are decoded)."""
  dataset = preprocessing.sample_examples(file_patterns, count, seed).map(
      lambda s: _decode(s, image_size)[0])
  return [preprocessing.to_model_input(image).numpy()
          for image in dataset]


def representative_metadata(file_patterns: Sequence[str], count: int,
                            seed: int) -> List[np.ndarray]:
  """The encoded metadata (float32 [metadata_vector.SIZE]) of the examples
  representative_images samples with the same arguments, in its order."""
  sample = preprocessing.sample_examples(file_patterns, count, seed)
  raw = _concatenate([_raw_metadata(batch)
                      for batch in sample.batch(1024).as_numpy_iterator()])
  return list(encode_metadata(raw))
