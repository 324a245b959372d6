"""A SavedModel's answers on one ExampleGen split, with what slices them.

The interval gate (components/interval_gate.py) and the run report
(components/run_report.py) both score the candidate on the test split
through its ``serving_default`` signature (serialized tf.Examples, so a
model with metadata inputs sees them too) and keep, per example, the label,
the lesion id (the bootstrap's cluster), the slicing features and the JPEG.
"""

import dataclasses
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from models import features
from models import preprocessing

# Per-example string features kept for slicing (EVAL_SLICES' features).
SLICE_FEATURES = (features.SEX_KEY, features.AGE_BAND_KEY,
                  features.LOCALIZATION_KEY, features.DATASET_KEY)


@dataclasses.dataclass
class Predictions:
  """The SavedModel's answers on one split."""
  labels: np.ndarray          # int [N]
  probabilities: np.ndarray   # float [N, classes]
  image_ids: List[str]
  jpegs: List[bytes]
  # An example without a lesion id is its own lesion (its image id).
  lesion_ids: List[str] = dataclasses.field(default_factory=list)
  # feature key -> value per example ('unknown' when missing).
  slices: Dict[str, List[str]] = dataclasses.field(default_factory=dict)


def _text(feature, key: str, default: str) -> str:
  values = feature[key].bytes_list.value if key in feature else []
  return values[0].decode() if values else default


def predict_split(loaded, split_files: Sequence[str],
                  batch_size: int = 64) -> Predictions:
  """serving_default (serialized tf.Examples) on every example of a split.

  ``loaded``: the SavedModel, as ``tf.saved_model.load`` returns it.
  """
  serve = loaded.signatures[features.EXAMPLE_SIGNATURE]
  labels, probabilities, ids, jpegs, lesions = [], [], [], [], []
  slices: Dict[str, List[str]] = {key: [] for key in SLICE_FEATURES}
  for batch in preprocessing.read_examples(split_files).batch(batch_size):
    probabilities.append(
        serve(examples=batch)[features.PREDICTION_KEY].numpy())
    for serialized in batch.numpy():
      feature = tf.train.Example.FromString(serialized).features.feature
      labels.append(feature[features.LABEL_KEY].int64_list.value[0])
      image_id = _text(feature, features.IMAGE_ID_KEY, '')
      ids.append(image_id)
      lesions.append(_text(feature, features.LESION_ID_KEY, '')
                     or image_id or f'#{len(lesions)}')
      jpegs.append(feature[features.IMAGE_KEY].bytes_list.value[0])
      for key in SLICE_FEATURES:
        slices[key].append(_text(feature, key, features.UNKNOWN))
  if not labels:
    raise ValueError(f'no examples in {list(split_files)}')
  return Predictions(np.array(labels), np.concatenate(probabilities), ids,
                     jpegs, lesions, slices)
