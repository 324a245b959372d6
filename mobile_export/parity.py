"""Parity gate: does a .tflite answer like the SavedModel it came from?

On the same images (the test split, canonical preprocessing) both models are
scored, and two numbers get 95% intervals from a bootstrap over lesions
(components/intervals.py; the same draws for both models):

* top-1 agreement with the SavedModel.  A file fails when the whole interval
  lies below ``min_top1_agreement``: it surely disagrees more than allowed
  (a few flips between near-tied classes on a small test split do not).
* the paired balanced-accuracy drop, SavedModel - .tflite.  A file fails
  when the interval's upper bound exceeds ``max_balanced_accuracy_drop``:
  it must be shown not to lose more than that (non-inferiority).

Balanced accuracy is the mean per-class recall over the classes present,
the project's gated metric.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from components import intervals
from models import features
from models import preprocessing


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Bounds a converted model must meet to be pushed."""
  min_top1_agreement: float
  max_balanced_accuracy_drop: float

  def __post_init__(self):
    if not 0.0 <= self.min_top1_agreement <= 1.0:
      raise ValueError('min_top1_agreement must be in [0, 1], got '
                       f'{self.min_top1_agreement}')
    if self.max_balanced_accuracy_drop < 0.0:
      raise ValueError('max_balanced_accuracy_drop must be >= 0, got '
                       f'{self.max_balanced_accuracy_drop}')


@dataclasses.dataclass
class ClassificationMetrics:
  """Top-1 metrics of one model on labelled images."""
  examples: int
  accuracy: float
  balanced_accuracy: float
  per_class_recall: Dict[str, float]


@dataclasses.dataclass
class ParityResult:
  """The verdict on one converted model.

  ``top1_agreement`` and ``balanced_accuracy_drop`` are the point values;
  their ``_interval`` twins are ``{"value", "lower", "upper"}`` (null bounds
  when there are too few lesions to resample).
  """
  fmt: str
  examples: int
  top1_agreement: float
  balanced_accuracy_drop: float
  max_probability_difference: float
  metrics: ClassificationMetrics
  passed: bool
  reasons: List[str]
  top1_agreement_interval: Dict[str, Optional[float]] = dataclasses.field(
      default_factory=dict)
  balanced_accuracy_drop_interval: Dict[str, Optional[float]] = (
      dataclasses.field(default_factory=dict))
  lesions: int = 0

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]
                           ) -> ClassificationMetrics:
  """Accuracy, balanced accuracy and per-class recall of top-1 predictions.

  Classes without an example among ``labels`` are left out of the balanced
  accuracy (and of ``per_class_recall``), as in the TFMA and Keras metrics.
  """
  labels = np.asarray(labels, np.int64)
  if len(labels) == 0:
    return ClassificationMetrics(0, 0.0, 0.0, {})
  predicted = np.argmax(probabilities, axis=1)
  hit = predicted == labels
  recall = {}
  for class_id, name in enumerate(class_names):
    mask = labels == class_id
    if mask.any():
      recall[name] = float(hit[mask].mean())
  return ClassificationMetrics(
      examples=int(len(labels)), accuracy=float(hit.mean()),
      balanced_accuracy=float(np.mean(list(recall.values()))),
      per_class_recall=recall)


def _bounds(interval: intervals.Interval) -> Dict[str, Optional[float]]:
  return {k: (None if v is None or not np.isfinite(v) else float(v))
          for k, v in interval.as_dict().items()}


def compare(fmt: str, reference: np.ndarray, candidate: np.ndarray,
            labels: np.ndarray, class_names: Sequence[str],
            thresholds: Thresholds, groups: Optional[Sequence] = None, *,
            draws: int = intervals.DEFAULT_DRAWS,
            seed: int = intervals.DEFAULT_SEED,
            confidence: float = intervals.DEFAULT_CONFIDENCE
            ) -> ParityResult:
  """Judges a converted model's probabilities against the reference's.

  Args:
    fmt: the converted model's format name (for the report).
    reference: the SavedModel's probabilities [N, C].
    candidate: the converted model's probabilities [N, C], same images.
    labels: true class ids [N].
    class_names: names of the C classes.
    thresholds: the gate.
    groups: each image's lesion id [N] (None: every image its own lesion).
    draws: bootstrap draws.
    seed: the bootstrap's seed.
    confidence: the intervals' level.

  Returns:
    The result; ``passed`` is False with a reason for every failed bound.
  """
  reference = np.asarray(reference, np.float32)
  candidate = np.asarray(candidate, np.float32)
  if reference.shape != candidate.shape or reference.shape[0] != len(labels):
    raise ValueError(f'shapes differ: reference {reference.shape}, candidate '
                     f'{candidate.shape}, labels {np.shape(labels)}')
  examples = int(len(labels))
  reference_metrics = classification_metrics(reference, labels, class_names)
  candidate_metrics = classification_metrics(candidate, labels, class_names)
  reasons = []
  agreement_interval, drop_interval, lesions = {}, {}, 0
  if examples == 0:
    agreement, drop, max_diff = 0.0, 0.0, 0.0
    reasons.append('no images to compare on')
  else:
    labels = np.asarray(labels, np.int64)
    if groups is not None and len(groups) != examples:
      raise ValueError(f'{len(groups)} lesion ids for {examples} images')
    lesions = int(len(np.unique(groups))) if groups is not None else examples
    common = dict(draws=draws, seed=seed, confidence=confidence)
    agreed = intervals.bootstrap(intervals.accuracy, reference.argmax(1),
                                 candidate.argmax(1), groups, **common)
    lost = intervals.paired_difference(intervals.balanced_accuracy, labels,
                                       reference, candidate, groups, **common)
    agreement, drop = agreed.value, lost.value
    agreement_interval, drop_interval = _bounds(agreed), _bounds(lost)
    max_diff = float(np.abs(reference - candidate).max())
    if agreed.upper < thresholds.min_top1_agreement:
      reasons.append(f'top-1 agreement with the SavedModel {agreed} lies '
                     f'wholly below {thresholds.min_top1_agreement:.4f}')
    if not lost.upper <= thresholds.max_balanced_accuracy_drop:
      reasons.append(f'balanced accuracy drop {lost}: its upper bound '
                     f'{lost.upper:.4f} > '
                     f'{thresholds.max_balanced_accuracy_drop:.4f}')
  return ParityResult(
      fmt=fmt, examples=examples, top1_agreement=float(agreement),
      balanced_accuracy_drop=float(drop),
      max_probability_difference=max_diff, metrics=candidate_metrics,
      passed=not reasons, reasons=reasons,
      top1_agreement_interval=agreement_interval,
      balanced_accuracy_drop_interval=drop_interval, lesions=lesions)


def saved_model_predict(saved_model_dir: str, pixels: np.ndarray,
                        batch_size: int = 64,
                        metadata: Optional[Dict[str, np.ndarray]] = None,
                        image_only: bool = False) -> np.ndarray:
  """The SavedModel's raw-image signature on uint8 images [N, S, S, 3]:
  the single-view one the .tflite files are converted from
  (``features.single_view_image_signature``).

  ``metadata``: for a model with metadata, the images' raw metadata
  (mobile_export/data.load_metadata: age [N], sex [N], localization [N]),
  fed as they are: the reference encodes them inside the model, the .tflite
  gets metadata_vector's encoding of the same rows.  ``image_only``: a
  model with metadata through its image-only signature
  (``features.IMAGE_ONLY_SIGNATURE``, every metadata value missing; no
  ``metadata``), the reference of its image-only .tflite files.
  """
  if image_only and metadata is not None:
    raise ValueError('the image-only signature takes no metadata')
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures[
      features.IMAGE_ONLY_SIGNATURE if image_only else
      features.single_view_image_signature(loaded.signatures)]
  outputs = []
  for start in range(0, len(pixels), batch_size):
    images = preprocessing.to_model_input(
        tf.constant(pixels[start:start + batch_size]))
    extra = {} if metadata is None else {
        key: tf.constant(metadata[key][start:start + batch_size])
        for key in features.METADATA_KEYS}
    outputs.append(signature(images=images, **extra)[
        features.PREDICTION_KEY].numpy())
  if not outputs:
    num_classes = signature.structured_outputs[
        features.PREDICTION_KEY].shape[-1]
    return np.zeros((0, num_classes), np.float32)
  return np.concatenate(outputs)
