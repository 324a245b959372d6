"""Operating points of a trained model on one split (issue 14).

For an exported model (the examples signature) and a split of the
ingestion's Examples:

* ``as_served``: its decisions as they are;
* ``prior_correction_cross_fitted``: calibration.fit_prior_correction (the
  Trainer's ``prior_correction: balanced``) fitted on half of the split's
  lesions and applied to the other half, both ways, over ``--repeats``
  random lesion halvings: what the correction is worth on lesions it was
  not fitted on, measured without touching another split;
* ``prior_correction_in_sample``: fitted on the whole split and scored on
  it (optimistic by construction: the Trainer's own eval-split view);
* ``tradeoff``: the curve between balanced accuracy and accuracy, the
  logits moved by lambda * log(train prior) (lambda > 0 favours the common
  classes: accuracy up, balanced accuracy down), from the served model.

Scored with decision_metrics (balanced accuracy, accuracy, macro F1,
per-class recall, melanoma first).  Choose on ``--split eval``; ``--split
test`` once, for the final report.

  .venv/bin/python benchmarks/operating_points.py --examples E \\
      --serving RUN/serving --split eval --out benchmarks/results/op.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import real_data_quality  # pylint: disable=g-import-not-at-top
from models import calibration  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top

TRADEOFF_LAMBDAS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def lesion_halves(lesions: np.ndarray, seed: int):
  """Two boolean masks splitting the examples by lesion (no lesion in
  both), each lesion to a half with probability 1/2."""
  unique = np.unique(lesions)
  rng = np.random.default_rng(seed)
  first = set(unique[rng.random(len(unique)) < 0.5])
  mask = np.array([lesion in first for lesion in lesions])
  return mask, ~mask


def cross_fitted(probabilities: np.ndarray, labels: np.ndarray,
                 lesions: np.ndarray, seed: int) -> np.ndarray:
  """Every example's prior-corrected probabilities, the offsets fitted on
  the other half of the lesions."""
  out = np.empty_like(probabilities, dtype=np.float64)
  halves = lesion_halves(lesions, seed)
  for fit_on, apply_to in (halves, halves[::-1]):
    offsets, _ = calibration.fit_prior_correction(
        probabilities[fit_on], labels[fit_on])
    out[apply_to] = calibration.corrected(probabilities[apply_to], 1.0,
                                          offsets)
  return out


def tradeoff(probabilities: np.ndarray, labels: np.ndarray,
             prior: np.ndarray, class_names, lambdas=TRADEOFF_LAMBDAS):
  """decision_metrics at logits + lambda * log(prior), for each lambda."""
  log_prior = np.log(np.asarray(prior, np.float64))
  return [{'lambda': float(lam), **real_data_quality.decision_metrics(
      labels, calibration.corrected(probabilities, 1.0, lam * log_prior),
      class_names)} for lam in lambdas]


def _mean_metrics(runs):
  """The mean of decision_metrics dicts (recall per class too)."""
  out = {}
  for key in ('balanced_accuracy', 'accuracy', 'macro_f1'):
    values = [run[key] for run in runs]
    out[key] = float(np.mean(values))
    out[key + '_range'] = [float(min(values)), float(max(values))]
  out['recall'] = {name: float(np.mean([run['recall'][name] for run in runs]))
                   for name in runs[0]['recall']}
  return out


def operating_points(labels, probabilities, lesions, class_names, prior,
                     repeats: int = 5) -> dict:
  metrics = real_data_quality.decision_metrics
  runs = [metrics(labels, cross_fitted(probabilities, labels, lesions, seed),
                  class_names) for seed in range(repeats)]
  offsets, report = calibration.fit_prior_correction(probabilities, labels)
  return {
      'examples': int(len(labels)),
      'lesions': int(len(np.unique(lesions))),
      'as_served': metrics(labels, probabilities, class_names),
      'prior_correction_cross_fitted': {'repeats': repeats,
                                        **_mean_metrics(runs)},
      'prior_correction_in_sample': {
          'offsets': dict(zip(class_names, report['offsets'])),
          **metrics(labels, calibration.corrected(probabilities, 1.0,
                                                  offsets), class_names)},
      'tradeoff': tradeoff(probabilities, labels, prior, class_names),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True,
                      help='an ImageExampleGen Examples artifact folder')
  parser.add_argument('--serving', action='append', required=True,
                      help='an exported model folder (repeatable)')
  parser.add_argument('--split', default='eval', choices=('eval', 'test'))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  split = lambda name: [os.path.join(args.examples, f'Split-{name}', '*')]
  class_names = preprocessing.read_labels(split('train'))
  counts = np.asarray(preprocessing.label_counts(split('train'),
                                                 len(class_names)), float)
  results = []
  for serving in args.serving:
    labels, probabilities, lesions = real_data_quality.predict_split(
        serving, split(args.split))
    result = {'serving_dir': serving, 'split': args.split,
              **operating_points(labels, probabilities, lesions, class_names,
                                 counts / counts.sum(), args.repeats)}
    print(json.dumps({k: result[k] for k in (
        'serving_dir', 'as_served', 'prior_correction_cross_fitted')}),
          flush=True)
    results.append(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
