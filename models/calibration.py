"""Temperature scaling (Guo et al., 2017) of the classifier's probabilities.

A network trained with class weights and early stopping is rarely
calibrated: its top-1 probability is not the frequency with which it is
right.  Temperature scaling divides the logits by one scalar T > 0 fitted
on held-out data (here the eval split, the split early stopping watches;
the Evaluator then measures calibration on the untouched test split).  The
argmax, and so accuracy, balanced accuracy and every recall, is unchanged;
only the confidence moves.  The models end in a softmax, so the logits are
recovered as log-probabilities: ``softmax(log(p) / T) = softmax(z / T)``
for logits z, because log(p) and z differ by a constant per example.

``models/trainer.py`` fits T after training (``fit_temperature``) and folds
it into the softmax layer (``fold_temperature``) before the export, so the
SavedModel, the .tflite files converted from it, TFMA and `skinlesion
predict` / `serve` all see the same calibrated probabilities.  ``CALIBRATION_FILE`` beside ``saved_model.pb``
records the fit (it travels with the pushed version).

Prior correction (``fit_prior_correction``, setting ``prior_correction``):
after the temperature, per-class offsets c are added to the logits,
``softmax(z / T + c)``, fitted on the same eval predictions to minimise the
class-balanced negative log-likelihood (every class weighs the same,
whatever its count).  The result estimates the posterior under equal class
prevalence, the quantity whose arg-max maximises balanced accuracy; a model
trained with class weights aims at it on the train split, where it overfits
the rare classes.  Unlike the temperature it moves decisions (on a
class-weighted HAM10000 model it lowered eval balanced accuracy too:
BENCHMARKS.md, "Prior correction") and its probabilities are calibrated to
equal prevalence, not to the data's.  It folds into the same softmax
layer's bias.
"""

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import keras
import numpy as np
from scipy import optimize
import tensorflow as tf

CALIBRATION_FILE = 'calibration.json'
# Clip before the log: a float32 softmax can round a probability to 0.
_MIN_PROBABILITY = 1e-12
# The fitted temperature is kept inside [1 / _MAX_INVERSE, _MAX_INVERSE].
_MAX_INVERSE = 100.0
# L2 penalty on the prior correction's offsets: keeps the optimum finite
# where the eval split separates a class perfectly, and barely moves it
# otherwise (the balanced NLL is O(1); an offset of 1 costs 1e-3).
_OFFSET_L2 = 1e-3


def fold_temperature(model: keras.Model, temperature: float,
                     layer_name: str,
                     offsets: Optional[Sequence[float]] = None) -> None:
  """Makes the model answer softmax(z / T + c): divides the kernel and bias
  of its softmax layer (``layer_name``, a Dense layer) by T and adds the
  prior correction's ``offsets`` c (if any) to the bias, in place.

  softmax((W x + b) / T + c) = softmax((W / T) x + b / T + c): the exported
  graph keeps its ops, so every signature, Grad-CAM and the .tflite
  conversions (int8 included: no extra log / divide to quantize) see the
  calibrated probabilities, and nothing downstream needs to know T or c.
  """
  if float(temperature) == 1.0 and not offsets:
    return
  layer = model.get_layer(layer_name)
  if (not isinstance(layer, keras.layers.Dense)
      or layer.activation is not keras.activations.softmax
      or not layer.use_bias):
    raise ValueError(f'cannot fold a temperature into {layer_name!r}: it is '
                     'not a Dense softmax layer with a bias')
  kernel, bias = layer.get_weights()
  bias = bias / temperature
  if offsets:
    if len(offsets) != len(bias):
      raise ValueError(f'{len(offsets)} prior-correction offsets for '
                       f'{len(bias)} classes')
    bias = bias + np.asarray(offsets, bias.dtype)
  layer.set_weights([kernel / temperature, bias])


def _log_scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
  """log softmax(log(p) / T), computed stably in float64."""
  logits = np.log(np.maximum(np.asarray(probabilities, np.float64),
                             _MIN_PROBABILITY)) / float(temperature)
  logits -= logits.max(axis=-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(log(p) / T) in float64 NumPy."""
  return np.exp(_log_scaled(probabilities, temperature))


def _scaled_nll(probabilities: np.ndarray, labels: np.ndarray,
                temperature: float) -> float:
  # From the log-softmax: no clipping, so the NLL stays convex in 1 / T
  # even where a label's probability underflows.
  log_p = _log_scaled(probabilities, temperature)
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def reliability(confidence: np.ndarray, correct: np.ndarray,
                weights: np.ndarray, bins: int):
  """(ECE, count, mean confidence, accuracy per bin) of top-1 predictions.

  Equal-width bins: bin i holds confidences in [i / bins, (i + 1) / bins),
  the last bin includes 1.0 (the TFMA metric in components/tfma_metrics.py
  bins the same way).
  """
  confidence = np.asarray(confidence, np.float64)
  index = np.minimum((confidence * bins).astype(int), bins - 1)
  totals = np.zeros((bins, 3))
  np.add.at(totals, index, np.stack(
      [weights, weights * confidence, weights * np.asarray(correct, float)],
      axis=1))
  return reliability_from_totals(totals)


def reliability_from_totals(totals: np.ndarray):
  """As ``reliability``, from per-bin (weight, Σ confidence, Σ correct)."""
  count = totals[:, 0]
  with np.errstate(invalid='ignore', divide='ignore'):
    confidence = np.where(count > 0, totals[:, 1] / count, np.nan)
    accuracy = np.where(count > 0, totals[:, 2] / count, np.nan)
  total = count.sum()
  if total <= 0:
    ece = float('nan')
  else:
    gaps = np.where(count > 0, np.abs(accuracy - confidence), 0.0)
    ece = float(np.sum(count / total * gaps))
  return ece, count, confidence, accuracy


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int) -> float:
  probabilities = np.asarray(probabilities)
  correct = probabilities.argmax(-1) == np.asarray(labels)
  return reliability(probabilities.max(-1), correct,
                     np.ones(len(probabilities)), bins)[0]


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray,
                    bins: int) -> Tuple[float, Dict[str, Any]]:
  """(T to apply, report): temperature scaling fitted on these examples.

  The fitted T minimizes the negative log-likelihood of the labels (the NLL
  of softmax(z / T) is convex in 1 / T, so a bounded scalar search over
  1 / T finds the global minimum).  It is applied (returned) only when it
  lowers both the NLL and the top-1 expected calibration error on these
  examples; otherwise T = 1 and the report says why (``applied``,
  ``reason``).  The report holds both measures before and at the fitted T;
  the ECE uses ``bins`` equal-width bins (the Evaluator's
  configs.CALIBRATION_BINS, passed by the Trainer).
  """
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels, int)
  if probabilities.ndim != 2 or len(probabilities) != len(labels):
    raise ValueError(f'probabilities {probabilities.shape} and labels '
                     f'{labels.shape} do not match')
  if not len(labels):
    raise ValueError('no example to fit the temperature on')
  # Searched over log(1 / T): unimodal there too, and as fine near T = 10
  # as near T = 0.1.
  result = optimize.minimize_scalar(
      lambda log_inverse: _scaled_nll(probabilities, labels,
                                      float(np.exp(-log_inverse))),
      bounds=(-np.log(_MAX_INVERSE), np.log(_MAX_INVERSE)), method='bounded',
      options={'xatol': 1e-6})
  fitted = float(np.exp(-result.x))
  after = scale(probabilities, fitted)
  report = {
      'method': 'temperature',
      'fitted_temperature': fitted,
      'examples': int(len(labels)),
      'nll_before': _scaled_nll(probabilities, labels, 1.0),
      'nll_after': _scaled_nll(probabilities, labels, fitted),
      'ece_before': expected_calibration_error(probabilities, labels, bins),
      'ece_after': expected_calibration_error(after, labels, bins),
      'bins': bins,
  }
  # Applied only when it makes both measures better on the data it was fitted
  # on: the NLL optimum can soften (or sharpen) the top-1 probability away
  # from its accuracy (seen on the demo's 100-image eval split: NLL 1.480 ->
  # 1.422 but ECE 0.111 -> 0.141, and 0.082 -> 0.156 on the test split).
  worse = [name for name in ('nll', 'ece')
           if report[f'{name}_after'] > report[f'{name}_before']]
  report['applied'] = not worse
  report['temperature'] = fitted if not worse else 1.0
  if worse:
    report['reason'] = ('not applied: T = {:.3f} raised the {} on the '
                        'fitting data ({})'.format(
                            fitted, ' and '.join(n.upper() for n in worse),
                            ', '.join(
                                f'{n.upper()} {report[n + "_before"]:.4f} -> '
                                f'{report[n + "_after"]:.4f}' for n in worse)))
  return report['temperature'], report


def corrected(probabilities: np.ndarray, temperature: float,
              offsets: Sequence[float]) -> np.ndarray:
  """softmax(log(p) / T + c) in float64 NumPy."""
  log_q = _log_scaled(probabilities, temperature) + np.asarray(offsets,
                                                                np.float64)
  log_q -= log_q.max(axis=-1, keepdims=True)
  q = np.exp(log_q)
  return q / q.sum(axis=-1, keepdims=True)


def _balanced_weights(labels: np.ndarray, classes: int) -> np.ndarray:
  """Per-example weights, each class's summing to 1 / (classes present)."""
  counts = np.bincount(labels, minlength=classes).astype(np.float64)
  present = int((counts > 0).sum())
  return 1.0 / (present * counts[labels])


def balanced_nll(probabilities: np.ndarray, labels: np.ndarray,
                 temperature: float = 1.0,
                 offsets: Optional[Sequence[float]] = None) -> float:
  """The class-balanced NLL of softmax(log(p) / T + c): the mean over the
  classes present of each class's mean negative log-likelihood."""
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels, int)
  q = corrected(probabilities, temperature,
                np.zeros(probabilities.shape[1]) if offsets is None
                else offsets)
  weights = _balanced_weights(labels, probabilities.shape[1])
  picked = np.maximum(q[np.arange(len(labels)), labels], _MIN_PROBABILITY)
  return float(-np.sum(weights * np.log(picked)))


def _balanced_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
  predicted = probabilities.argmax(-1)
  return float(np.mean([np.mean(predicted[labels == k] == k)
                        for k in np.unique(labels)]))


def fit_prior_correction(probabilities: np.ndarray, labels: np.ndarray,
                         temperature: float = 1.0
                         ) -> Tuple[Sequence[float], Dict[str, Any]]:
  """(offsets c, report): the prior correction fitted on these examples.

  c minimises the class-balanced NLL of softmax(log(p) / T + c) (convex in
  c; L-BFGS with the exact gradient), plus a small L2 penalty; it is
  centred (softmax ignores a common shift).  Every class must have an
  example here: a class without one would be pushed to -inf, so then
  nothing is fitted (c = 0) and the report says why.  The report holds the
  balanced NLL, balanced accuracy and accuracy before and after, on these
  (the fitting) examples: an in-sample view, optimistic by construction.
  """
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels, int)
  if probabilities.ndim != 2 or len(probabilities) != len(labels):
    raise ValueError(f'probabilities {probabilities.shape} and labels '
                     f'{labels.shape} do not match')
  classes = probabilities.shape[1]
  counts = np.bincount(labels, minlength=classes)
  report: Dict[str, Any] = {'method': 'balanced',
                            'examples': int(len(labels)),
                            'temperature': float(temperature)}
  absent = [int(k) for k in np.flatnonzero(counts == 0)]
  if absent:
    report.update(applied=False, offsets=[0.0] * classes,
                  reason=f'not applied: class index(es) {absent} have no '
                  'example to fit on')
    return report['offsets'], report
  base = _log_scaled(probabilities, temperature)
  weights = _balanced_weights(labels, classes)
  one_hot = np.eye(classes)[labels]

  def loss_and_gradient(c):
    z = base + c
    z = z - z.max(axis=1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -np.sum(weights * log_q[np.arange(len(labels)), labels])
    gradient = (np.exp(log_q) - one_hot).T @ weights
    return (loss + _OFFSET_L2 * np.sum(c * c),
            gradient + 2 * _OFFSET_L2 * c)

  result = optimize.minimize(loss_and_gradient, np.zeros(classes), jac=True,
                             method='L-BFGS-B', options={'gtol': 1e-9})
  offsets = result.x - result.x.mean()
  after = corrected(probabilities, temperature, offsets)
  before = scale(probabilities, temperature)
  report.update({
      'applied': True,
      'offsets': [float(c) for c in offsets],
      'balanced_nll_before': balanced_nll(probabilities, labels, temperature),
      'balanced_nll_after': balanced_nll(probabilities, labels, temperature,
                                         offsets),
      'balanced_accuracy_before': _balanced_accuracy(before, labels),
      'balanced_accuracy_after': _balanced_accuracy(after, labels),
      'accuracy_before': float(np.mean(before.argmax(-1) == labels)),
      'accuracy_after': float(np.mean(after.argmax(-1) == labels)),
  })
  return report['offsets'], report


def prior_offsets(report: Dict[str, Any]) -> Optional[Sequence[float]]:
  """The offsets a calibration report's prior correction applied (None)."""
  prior = report.get('prior_correction') or {}
  return prior.get('offsets') if prior.get('applied') else None


def write(saved_model_dir: str, report: Dict[str, Any]) -> None:
  with tf.io.gfile.GFile(os.path.join(saved_model_dir, CALIBRATION_FILE),
                         'w') as f:
    f.write(json.dumps(report, indent=2) + '\n')


def read(saved_model_dir: str) -> Dict[str, Any]:
  """The fit recorded beside a SavedModel ({'method': 'none'} if absent)."""
  path = os.path.join(saved_model_dir, CALIBRATION_FILE)
  if not tf.io.gfile.exists(path):
    return {'method': 'none', 'temperature': 1.0}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
