"""The parity gate's arithmetic and its SavedModel / split readers."""

import numpy as np
import pytest

from mobile_export import data
from mobile_export import parity
from mobile_export import tflite
from models import preprocessing
from tests.conftest import TINY_IMAGE_SIZE

NAMES = ('a', 'b', 'c')
GATE = parity.Thresholds(min_top1_agreement=0.75,
                         max_balanced_accuracy_drop=0.1)


def _onehot(classes, num=3):
  out = np.full((len(classes), num), 0.1, np.float32)
  out[np.arange(len(classes)), classes] = 0.8
  return out


def test_metrics_leave_out_absent_classes():
  labels = np.array([0, 0, 0, 1])      # no 'c'
  probs = _onehot([0, 1, 1, 1])        # a: 1/3, b: 1/1
  metrics = parity.classification_metrics(probs, labels, NAMES)
  assert metrics.examples == 4
  assert metrics.accuracy == pytest.approx(0.5)
  assert metrics.per_class_recall == pytest.approx({'a': 1 / 3, 'b': 1.0})
  assert metrics.balanced_accuracy == pytest.approx(2 / 3)


def test_identical_predictions_pass():
  labels = np.array([0, 1, 2, 2])
  probs = _onehot([0, 1, 2, 0])
  result = parity.compare('int8', probs, probs, labels, NAMES, GATE)
  assert result.passed and result.reasons == []
  assert result.top1_agreement == 1.0
  assert result.balanced_accuracy_drop == 0.0
  assert result.max_probability_difference == 0.0


def test_disagreement_and_accuracy_loss_each_fail_with_a_reason():
  labels = np.array([0, 1, 2, 2])
  reference = _onehot([0, 1, 2, 2])
  candidate = _onehot([0, 1, 2, 0])    # one image flips: agreement 0.75
  result = parity.compare('int8', reference, candidate, labels, NAMES, GATE)
  # Agreement 0.75 meets its bound; the drop (1 - 5/6) exceeds 0.1.
  assert not result.passed
  assert result.top1_agreement == 0.75
  assert result.balanced_accuracy_drop == pytest.approx(1 / 6)
  assert result.reasons == ['balanced accuracy drop 0.1667 > 0.1000']
  worse = _onehot([1, 1, 2, 0])
  result = parity.compare('int8', reference, worse, labels, NAMES, GATE)
  assert [r.split()[0] for r in result.reasons] == ['top-1', 'balanced']


def test_a_converted_model_may_be_better_than_the_reference():
  labels = np.array([0, 1, 2, 2])
  result = parity.compare('int8', _onehot([0, 1, 2, 1]), _onehot([0, 1, 2, 2]),
                          labels, NAMES,
                          parity.Thresholds(0.75, 0.0))
  assert result.passed and result.balanced_accuracy_drop < 0


def test_no_images_fails_and_bad_shapes_raise():
  empty = np.zeros((0, 3), np.float32)
  result = parity.compare('int8', empty, empty, np.zeros(0), NAMES, GATE)
  assert not result.passed and result.reasons == ['no images to compare on']
  with pytest.raises(ValueError, match='shapes differ'):
    parity.compare('int8', _onehot([0]), _onehot([0, 1]), np.zeros(1), NAMES,
                   GATE)
  with pytest.raises(ValueError, match='min_top1_agreement'):
    parity.Thresholds(1.5, 0.0)
  with pytest.raises(ValueError, match='max_balanced_accuracy_drop'):
    parity.Thresholds(0.9, -0.1)


def test_split_images_and_savedmodel_use_the_canonical_preprocessing(
    trained_model, tiny_tfrecords):
  pixels, labels = data.load_images([tiny_tfrecords[1]], TINY_IMAGE_SIZE)
  expected = list(preprocessing.image_label_dataset([tiny_tfrecords[1]],
                                                    TINY_IMAGE_SIZE))
  assert pixels.dtype == np.uint8 and len(pixels) == len(expected)
  np.testing.assert_array_equal(pixels[5], expected[5][0].numpy())
  np.testing.assert_array_equal(labels, [int(y) for _, y in expected])
  probs = parity.saved_model_predict(trained_model.serving_model_dir, pixels,
                                     batch_size=16)
  assert probs.shape == (len(pixels), 7)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  assert parity.saved_model_predict(trained_model.serving_model_dir,
                                    pixels[:0]).shape == (0, 7)


def test_representative_sample_is_seeded_and_in_unit_range(tiny_tfrecords):
  first = data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE,
                                     count=12, seed=3)
  again = data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE,
                                     count=12, seed=3)
  other = data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE,
                                     count=12, seed=4)
  assert len(first) == 12
  assert first[0].shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
  assert all(0.0 <= im.min() and im.max() <= 1.0 for im in first)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  with pytest.raises(ValueError, match='> 0'):
    data.representative_images([tiny_tfrecords[0]], TINY_IMAGE_SIZE, 0, 3)


def test_model_input_is_what_the_task_library_feeds():
  pixels = np.array([[[[0, 128, 255]]]], np.uint8)
  np.testing.assert_array_equal(tflite.model_input(pixels, np.uint8), pixels)
  np.testing.assert_allclose(tflite.model_input(pixels, np.float32),
                             [[[[0.0, 128 / 255, 1.0]]]])
  with pytest.raises(ValueError, match='unsupported'):
    tflite.model_input(pixels, np.int8)
