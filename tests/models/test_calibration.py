"""Temperature scaling: the fit, folding it into the model, the export."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import calibration
from models import explain
from models import export
from models import features
from models import trainer
from pipeline import configs

BINS = configs.CALIBRATION_BINS


def _overconfident(n=3000, classes=7, sharpen=2.5, seed=0):
  """Labels drawn from softmax(z); probabilities softmax(sharpen * z)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, classes)) * 2
  truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  labels = np.array([rng.choice(classes, p=p) for p in truth])
  p = np.exp(sharpen * z)
  return p / p.sum(1, keepdims=True), labels


def test_fit_recovers_the_temperature_and_lowers_nll_and_ece():
  probabilities, labels = _overconfident(sharpen=2.5)
  temperature, report = calibration.fit_temperature(probabilities, labels, BINS)
  assert temperature == pytest.approx(2.5, rel=0.1)
  assert report['applied'] and report['fitted_temperature'] == temperature
  assert report['nll_after'] < report['nll_before']
  assert report['ece_after'] < 0.5 * report['ece_before']
  scaled = calibration.scale(probabilities, temperature)
  np.testing.assert_array_equal(scaled.argmax(1), probabilities.argmax(1))


def test_a_calibrated_model_keeps_temperature_one():
  probabilities, labels = _overconfident(sharpen=1.0, seed=3)
  temperature, report = calibration.fit_temperature(probabilities, labels, BINS)
  assert temperature == pytest.approx(1.0, abs=0.1)
  assert report['nll_after'] <= report['nll_before']


def test_a_fit_that_raises_the_ece_is_not_applied():
  # The top-1 probability equals its accuracy (ECE 0), but when it is wrong
  # the true class got almost nothing: the NLL optimum softens everything
  # and pulls the top-1 probability below its accuracy.
  probabilities = np.tile([0.7, 0.2999, 0.0001], (1000, 1))
  labels = np.where(np.arange(1000) % 10 < 7, 0, 2)
  temperature, report = calibration.fit_temperature(probabilities, labels, BINS)
  assert report['fitted_temperature'] > 1.5
  assert report['nll_after'] < report['nll_before']
  assert report['ece_after'] > report['ece_before'] + 0.05
  assert temperature == 1.0 and not report['applied']
  assert report['reason'].startswith('not applied: T = ')
  assert 'raised the ECE' in report['reason']


def test_ece_matches_a_direct_computation():
  probabilities, labels = _overconfident(n=400, seed=5)
  confidence = probabilities.max(1)
  correct = probabilities.argmax(1) == labels
  bins = np.minimum((confidence * 10).astype(int), 9)
  expected = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean())
                 * (bins == b).mean() for b in range(10) if (bins == b).any())
  assert calibration.expected_calibration_error(
      probabilities, labels, 10) == pytest.approx(expected, abs=1e-12)


def test_errors():
  with pytest.raises(ValueError, match='do not match'):
    calibration.fit_temperature(np.ones((3, 2)) / 2, np.zeros(4), BINS)
  with pytest.raises(ValueError, match='no example'):
    calibration.fit_temperature(np.ones((0, 2)), np.zeros(0), BINS)


def _tiny_model(size=16, classes=4):
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(4, 3, padding='same', activation='relu')(inputs)
  x = keras.layers.Identity(name=explain.FEATURE_MAP_LAYER)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(classes, activation='softmax',
                               name='probabilities')(x)
  return keras.Model(inputs, outputs)


def test_the_folded_temperature_reaches_every_exported_signature(tmp_path):
  keras.utils.set_random_seed(0)
  model = _tiny_model()
  model.layers[-1].set_weights([w * 8 for w in model.layers[-1].get_weights()])
  images = np.random.default_rng(0).random((5, 16, 16, 3)).astype(np.float32)
  raw = model(images).numpy()
  calibration.fold_temperature(model, 2.0, 'probabilities')
  expected = calibration.scale(raw, 2.0)
  np.testing.assert_allclose(model(images).numpy(), expected, atol=1e-5)
  export.export_serving_model(model, str(tmp_path), 16)
  loaded = tf.saved_model.load(str(tmp_path))
  served = loaded.signatures[features.IMAGE_SIGNATURE](
      images=tf.constant(images))[features.PREDICTION_KEY].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-5)
  gradcam = loaded.signatures[explain.GRADCAM_SIGNATURE](
      images=tf.constant(images))
  np.testing.assert_allclose(gradcam[features.PREDICTION_KEY].numpy(),
                             expected, atol=1e-5)
  assert not np.allclose(served, raw, atol=1e-3)
  np.testing.assert_array_equal(served.argmax(1), raw.argmax(1))


def test_folding_needs_a_dense_softmax_layer():
  model = _tiny_model()
  before = model.layers[-1].get_weights()
  calibration.fold_temperature(model, 1.0, 'probabilities')  # a no-op
  for a, b in zip(before, model.layers[-1].get_weights()):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='not a Dense softmax layer'):
    calibration.fold_temperature(model, 2.0, explain.FEATURE_MAP_LAYER)


def test_fit_calibration_setting(tmp_path):
  model = _tiny_model()
  images = np.random.default_rng(1).random((12, 16, 16, 3)).astype(np.float32)
  labels = np.arange(12) % 4
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
  temperature, report = trainer.fit_calibration(
      model, {'calibration': 'temperature', 'calibration_bins': BINS},
      dataset)
  assert report['examples'] == 12 and report['temperature'] == temperature
  assert report['fitted_on'] == 'eval split'
  assert trainer.fit_calibration(model, {'calibration': 'none'}, dataset) == (
      1.0, {'method': 'none', 'temperature': 1.0})
  with pytest.raises(ValueError, match='unknown calibration'):
    trainer.fit_calibration(model, {'calibration': 'platt'}, dataset)


def test_the_trainer_records_its_fit(trained_model):
  """The session's trained model: calibration.json beside the SavedModel,
  the same record in history.json."""
  path = os.path.join(trained_model.serving_model_dir,
                      calibration.CALIBRATION_FILE)
  with open(path) as f:
    fit = json.load(f)
  assert fit['method'] == 'temperature' and fit['fitted_on'] == 'eval split'
  assert fit['examples'] > 0 and fit['nll_after'] <= fit['nll_before']
  assert fit['temperature'] == (fit['fitted_temperature'] if fit['applied']
                                else 1.0)
  with open(os.path.join(trained_model.model_run_dir,
                         trainer.HISTORY_FILE)) as f:
    assert json.load(f)['calibration'] == fit
  assert calibration.read(trained_model.serving_model_dir) == fit
  assert calibration.read(str(os.path.dirname(path) + '/nowhere')) == {
      'method': 'none', 'temperature': 1.0}


def _prior_shifted(n=4000, classes=4, seed=0):
  """Labels drawn from softmax(z) with a skewed prior; the 'model' answers
  softmax(z + shift), as if it had learnt the wrong priors."""
  rng = np.random.default_rng(seed)
  prior = np.array([0.6, 0.25, 0.1, 0.05])[:classes]
  labels = rng.choice(classes, size=n, p=prior / prior.sum())
  z = rng.normal(size=(n, classes)) + 2.5 * np.eye(classes)[labels]
  shift = np.array([1.5, 0.0, -0.5, -1.0])[:classes]
  p = np.exp(z + shift)
  return p / p.sum(1, keepdims=True), labels, shift


def test_prior_correction_undoes_a_shift_of_the_logits():
  probabilities, labels, shift = _prior_shifted()
  offsets, report = calibration.fit_prior_correction(probabilities, labels)
  # The balanced-NLL optimum of softmax(z + shift + c) is c = -shift (up to
  # the common constant softmax ignores): the offsets are centred.
  np.testing.assert_allclose(offsets, -(shift - shift.mean()), atol=0.15)
  assert abs(sum(offsets)) < 1e-9
  assert report['applied'] and report['method'] == 'balanced'
  assert report['balanced_nll_after'] < report['balanced_nll_before']
  assert (report['balanced_accuracy_after'] >
          report['balanced_accuracy_before'] + 0.03)
  assert report['balanced_nll_after'] == pytest.approx(
      calibration.balanced_nll(probabilities, labels, 1.0, offsets))
  corrected = calibration.corrected(probabilities, 1.0, offsets)
  np.testing.assert_allclose(corrected.sum(1), 1.0)
  predicted = corrected.argmax(1)
  recall = [np.mean(predicted[labels == k] == k) for k in range(4)]
  assert np.mean(recall) == pytest.approx(report['balanced_accuracy_after'])


def test_prior_correction_after_a_temperature():
  probabilities, labels, _ = _prior_shifted(seed=1)
  sharp = calibration.scale(probabilities, 1 / 3.0)  # softmax(3 log p)
  offsets, report = calibration.fit_prior_correction(sharp, labels, 3.0)
  plain, _ = calibration.fit_prior_correction(probabilities, labels)
  np.testing.assert_allclose(offsets, plain, atol=1e-4)
  assert report['temperature'] == 3.0


def test_prior_correction_needs_every_class():
  probabilities, labels, _ = _prior_shifted()
  keep = labels != 3
  offsets, report = calibration.fit_prior_correction(probabilities[keep],
                                                     labels[keep])
  assert offsets == [0.0] * 4 and not report['applied']
  assert '[3]' in report['reason']
  assert calibration.prior_offsets({'prior_correction': report}) is None
  with pytest.raises(ValueError, match='do not match'):
    calibration.fit_prior_correction(probabilities, labels[:5])


def test_folded_offsets_are_the_corrected_probabilities():
  keras.utils.set_random_seed(0)
  model = _tiny_model()
  images = np.random.default_rng(0).random((5, 16, 16, 3)).astype(np.float32)
  raw = model(images).numpy()
  offsets = [0.7, -0.2, -0.4, -0.1]
  calibration.fold_temperature(model, 2.0, 'probabilities', offsets)
  np.testing.assert_allclose(model(images).numpy(),
                             calibration.corrected(raw, 2.0, offsets),
                             atol=1e-5)
  with pytest.raises(ValueError, match='3 prior-correction offsets for 4'):
    calibration.fold_temperature(model, 1.0, 'probabilities', [0, 0, 0])


def test_fit_calibration_with_prior_correction():
  model = _tiny_model()
  images = np.random.default_rng(1).random((12, 16, 16, 3)).astype(np.float32)
  labels = np.arange(12) % 4
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
  cfg = {'calibration': 'temperature', 'calibration_bins': BINS,
         'prior_correction': 'balanced'}
  temperature, report = trainer.fit_calibration(model, cfg, dataset)
  prior = report['prior_correction']
  assert prior['fitted_on'] == 'eval split' and prior['examples'] == 12
  assert prior['temperature'] == temperature
  assert calibration.prior_offsets(report) == prior['offsets']
  # Without a temperature: T = 1, the offsets still fitted.
  temperature, report = trainer.fit_calibration(
      model, {**cfg, 'calibration': 'none'}, dataset)
  assert temperature == 1.0 and report['method'] == 'none'
  assert report['prior_correction']['applied']
  with pytest.raises(ValueError, match='unknown prior correction'):
    trainer.fit_calibration(model, {**cfg, 'prior_correction': 'x'}, dataset)
  with pytest.raises(ValueError, match='prior_correction must be one of'):
    configs.Settings(prior_correction='x').validate()
