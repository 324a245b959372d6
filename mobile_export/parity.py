"""Parity gate: does a .tflite answer like the SavedModel it came from?

On the same images (the test split, canonical preprocessing), a converted
model must agree with the SavedModel's top-1 class on at least
``min_top1_agreement`` of the images and lose at most
``max_balanced_accuracy_drop`` of balanced accuracy (mean per-class recall
over the classes present, the project's gated metric).
"""

import dataclasses
from typing import Any, Dict, List, Sequence

import numpy as np
import tensorflow as tf

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
  """The verdict on one converted model."""
  fmt: str
  examples: int
  top1_agreement: float
  balanced_accuracy_drop: float
  max_probability_difference: float
  metrics: ClassificationMetrics
  passed: bool
  reasons: List[str]

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


def compare(fmt: str, reference: np.ndarray, candidate: np.ndarray,
            labels: np.ndarray, class_names: Sequence[str],
            thresholds: Thresholds) -> ParityResult:
  """Judges a converted model's probabilities against the reference's.

  Args:
    fmt: the converted model's format name (for the report).
    reference: the SavedModel's probabilities [N, C].
    candidate: the converted model's probabilities [N, C], same images.
    labels: true class ids [N].
    class_names: names of the C classes.
    thresholds: the gate.

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
  if examples == 0:
    agreement, drop, max_diff = 0.0, 0.0, 0.0
    reasons.append('no images to compare on')
  else:
    agreement = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    drop = (reference_metrics.balanced_accuracy
            - candidate_metrics.balanced_accuracy)
    max_diff = float(np.abs(reference - candidate).max())
    if agreement < thresholds.min_top1_agreement:
      reasons.append(f'top-1 agreement with the SavedModel {agreement:.4f} < '
                     f'{thresholds.min_top1_agreement:.4f}')
    if drop > thresholds.max_balanced_accuracy_drop:
      reasons.append(f'balanced accuracy drop {drop:.4f} > '
                     f'{thresholds.max_balanced_accuracy_drop:.4f}')
  return ParityResult(
      fmt=fmt, examples=examples, top1_agreement=agreement,
      balanced_accuracy_drop=float(drop),
      max_probability_difference=max_diff, metrics=candidate_metrics,
      passed=not reasons, reasons=reasons)


def saved_model_predict(saved_model_dir: str, pixels: np.ndarray,
                        batch_size: int = 64) -> np.ndarray:
  """The SavedModel's raw-image signature on uint8 images [N, S, S, 3]."""
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures[features.IMAGE_SIGNATURE]
  outputs = []
  for start in range(0, len(pixels), batch_size):
    images = preprocessing.to_model_input(
        tf.constant(pixels[start:start + batch_size]))
    outputs.append(signature(images=images)[features.PREDICTION_KEY].numpy())
  if not outputs:
    num_classes = signature.structured_outputs[
        features.PREDICTION_KEY].shape[-1]
    return np.zeros((0, num_classes), np.float32)
  return np.concatenate(outputs)
