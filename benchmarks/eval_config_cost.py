"""What the Evaluator's metrics cost: TFMA on synthetic predictions.

Runs tfma.analyze_raw_data with the pipeline's EvalConfig
(pipeline.build_eval_config; the change threshold dropped, as there is no
baseline here) on N synthetic 7-class predictions with random sex, age band
and site, i.e. every slice of configs.EVAL_SLICES, side by side:

  * the pipeline's config (AUC over configs.AUC_THRESHOLDS thresholds);
  * the same with AUC over 1,000 thresholds;
  * the same without AUC.

and prints the seconds and the largest |AUC - scikit-learn's exact AUC| over
the classes on the overall slice.

  .venv/bin/python benchmarks/eval_config_cost.py --examples 200 [--peaked]

--peaked: near-constant probabilities (a barely trained model's), where
bucketed AUC is coarsest.
"""

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn import metrics as skm
import tensorflow_model_analysis as tfma

from pipeline import configs
from pipeline import pipeline

SITES = ('back', 'face', 'trunk', 'lower extremity', 'upper extremity',
         'abdomen', 'scalp', 'neck', 'hand', 'foot')


def data(n, seed=0, peaked=False):
  rng = np.random.default_rng(seed)
  k = len(configs.LABELS)
  labels = rng.choice(k, size=n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += 1.2
  if peaked:
    logits *= 0.02
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  frame = pd.DataFrame({
      'label': labels, 'probabilities': list(probs),
      'sex': rng.choice(['male', 'female', 'unknown'], n),
      'age_band': rng.choice(list(configs.AGE_BAND_NAMES), n),
      'localization': rng.choice(SITES, n), 'dataset': 'synthetic'})
  return frame, labels, probs


def config(auc_thresholds):
  """The pipeline's EvalConfig on raw predictions; None: without AUC."""
  c = pipeline.build_eval_config(configs.Settings())
  c.model_specs[0].ClearField('signature_name')
  for spec in c.metrics_specs:
    for metric in spec.metrics:
      for threshold in metric.per_slice_thresholds:
        threshold.threshold.ClearField('change_threshold')
      if metric.class_name == 'AUC' and auc_thresholds:
        metric.config = json.dumps({'num_thresholds': auc_thresholds})
  if auc_thresholds is None:
    specs = [s for s in c.metrics_specs
             if not any(m.class_name == 'AUC' for m in s.metrics)]
    del c.metrics_specs[:]
    c.metrics_specs.extend(specs)
  return c


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--peaked', action='store_true')
  args = parser.parse_args()
  frame, labels, probs = data(args.examples, peaked=args.peaked)
  for name, thresholds in (
      (f'pipeline (AUC {configs.AUC_THRESHOLDS} thresholds)',
       configs.AUC_THRESHOLDS),
      ('AUC over 1000 thresholds', 1000),
      ('without AUC', None)):
    start = time.time()
    result = tfma.analyze_raw_data(frame, config(thresholds),
                                   output_path=tempfile.mkdtemp())
    seconds = time.time() - start
    error = ''
    if thresholds:
      overall = dict(result.slicing_metrics)[()]['']
      error = max(abs(overall[f'classId:{c}']['auc']['doubleValue']
                      - skm.roc_auc_score(labels == c, probs[:, c]))
                  for c in range(len(configs.LABELS)))
      error = f', max |AUC - sklearn| {error:.5f}'
    print(f'{name}: {seconds:.1f} s{error}', flush=True)


if __name__ == '__main__':
  main()
