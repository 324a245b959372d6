"""Images for calibration and parity, read from ExampleGen's TFRecords.

Both go through the canonical preprocessing (``models/preprocessing.py``:
decode, bilinear resize, round to uint8), so they are exactly what the
serving signatures and the mobile apps see.
"""

from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from models import features
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


def representative_images(file_patterns: Sequence[str], image_size: int,
                          count: int, seed: int) -> List[np.ndarray]:
  """A seeded random sample of ``count`` images, float32 [S, S, 3] in [0, 1].

  The serialized records are shuffled before decoding (cheap: only the
  sampled images are decoded); the buffer holds up to 10,000 records, so on
  larger splits the sample favours, but is not limited to, the first files.
  """
  if count <= 0:
    raise ValueError(f'representative image count must be > 0, got {count}')
  dataset = (preprocessing.read_examples(file_patterns)
             .shuffle(10_000, seed=seed, reshuffle_each_iteration=False)
             .take(count)
             .map(lambda s: _decode(s, image_size)[0]))
  return [preprocessing.to_model_input(image).numpy()
          for image in dataset]
