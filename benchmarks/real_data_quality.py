"""Real-data quality: train registry models on HAM10000, score one split.

Uses the project's own ingestion output (``skinlesion ingest``: lesion-
disjoint train / eval / test splits by lesion_id hash) and the Trainer's
``run_fn`` itself (the same code the pipeline runs), then scores the exported
``serving_default`` signature on one split (``--split``): balanced accuracy,
accuracy, macro F1, per-class recall (melanoma first), wall time, and the
split's ECE / NLL with the Trainer's temperature scaling and without it.
Choosing between configurations is done on ``--split eval`` (the default);
``--split test`` is for the one final score of the chosen configuration.

  skinlesion ingest --data ../shared/data/ham10000 --out /tmp/ham_home
  nice -n 10 .venv/bin/python benchmarks/real_data_quality.py \
      --examples /tmp/ham_home/pipelines/skin-lesion-tfx/ImageExampleGen/examples/1 \
      --out benchmarks/results/real_data_quality.json \
      --run cnn_baseline:'{"width": 1.0}' \
      --run mobilenet_v2:'{"weights": "../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"}'

Each ``--run MODEL:JSON`` starts from ``configs.REAL_DATA_PRESET`` and the
JSON overrides; results are appended to ``--out`` after every model, so a
partial run keeps what finished.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top

from models import calibration  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from models import trainer  # pylint: disable=g-import-not-at-top
from models import tta as tta_views  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top


def score(serving_dir: str, files, labels) -> dict:
  model = tf.saved_model.load(serving_dir)
  serve = model.signatures[features.EXAMPLE_SIGNATURE]
  spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  y_true, probabilities = [], []
  for batch in preprocessing.read_examples(files).batch(64):
    probabilities.append(serve(examples=batch)[features.PREDICTION_KEY].numpy())
    y_true.extend(tf.io.parse_example(batch, spec)[features.LABEL_KEY].numpy())
  probabilities = np.concatenate(probabilities)
  y_true, y_pred = np.array(y_true), probabilities.argmax(axis=1)
  # Calibration on the scored split, with the Trainer's temperature (folded
  # into the model when applied) and without it: softmax(log p * T) undoes
  # the fold exactly.
  fit = calibration.read(serving_dir)
  temperature = float(fit.get('temperature', 1.0))
  uncalibrated = calibration.scale(probabilities, 1.0 / temperature)
  bins = configs.CALIBRATION_BINS
  return {
      'examples': int(len(y_true)),
      **decision_metrics(y_true, probabilities, labels),
      'confusion': skm.confusion_matrix(
          y_true, y_pred, labels=range(len(labels))).tolist(),
      'calibration_fit': fit,
      'ece': calibration.expected_calibration_error(
          probabilities, y_true, bins),
      'ece_without_temperature': calibration.expected_calibration_error(
          uncalibrated, y_true, bins),
      'nll': float(skm.log_loss(y_true, probabilities,
                                     labels=range(len(labels)))),
      'nll_without_temperature': float(skm.log_loss(
          y_true, uncalibrated, labels=range(len(labels)))),
  }


def decision_metrics(y_true, probabilities, labels) -> dict:
  """Balanced accuracy, accuracy, macro F1 and per-class recall (melanoma
  first) of the top-1 decisions."""
  y_pred = probabilities.argmax(axis=1)
  recall = skm.recall_score(y_true, y_pred, labels=range(len(labels)),
                            average=None, zero_division=0)
  order = sorted(range(len(labels)),
                 key=lambda i: (labels[i] != configs.MELANOMA_LABEL, i))
  return {
      'balanced_accuracy': float(skm.balanced_accuracy_score(y_true, y_pred)),
      'accuracy': float(skm.accuracy_score(y_true, y_pred)),
      'macro_f1': float(skm.f1_score(y_true, y_pred, average='macro')),
      'recall': {labels[i]: float(recall[i]) for i in order},
  }


def tta_probabilities(serving_dir: str, files, image_size: int, modes):
  """(labels [N], {mode: probabilities [N, K]}): the single-view image
  signature averaged over each mode's views (what ``tta=<mode>`` puts inside
  the exported signatures), for a model trained and exported without it."""
  model = tf.saved_model.load(serving_dir)
  names = set(model.signatures)
  signature = model.signatures[features.single_view_image_signature(names)]
  with_metadata = features.METADATA_VECTOR_SIGNATURE in names
  spec = {**preprocessing.image_label_spec(),
          **(preprocessing.metadata_spec() if with_metadata else {})}
  predict = lambda inputs: signature(**inputs)[features.PREDICTION_KEY]
  y_true, by_mode = [], {mode: [] for mode in modes}
  for batch in preprocessing.read_examples(files).batch(32):
    parsed = tf.io.parse_example(batch, spec)
    y_true.extend(parsed[features.LABEL_KEY].numpy())
    inputs = {'images': preprocessing.decode_batch(parsed[features.IMAGE_KEY],
                                                   image_size)}
    if with_metadata:
      inputs.update({key: parsed[key]
                     for key in preprocessing.metadata_spec()})
    for mode in modes:
      by_mode[mode].append(
          tta_views.average(predict, inputs, mode, image_key='images').numpy())
  return np.array(y_true), {mode: np.concatenate(chunks)
                            for mode, chunks in by_mode.items()}


def score_tta(serving_dir: str, files, labels, image_size: int,
              modes=('flips', 'dihedral')) -> dict:
  """decision_metrics with test-time augmentation applied after training."""
  y_true, by_mode = tta_probabilities(serving_dir, files, image_size, modes)
  return {mode: decision_metrics(y_true, probabilities, labels)
          for mode, probabilities in by_mode.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True,
                      help='an ImageExampleGen Examples artifact folder')
  parser.add_argument('--out', required=True)
  parser.add_argument('--run', action='append', required=True,
                      help='MODEL:JSON overrides of REAL_DATA_PRESET')
  parser.add_argument('--split', default='eval', choices=('eval', 'test'),
                      help='the split scored (choose on eval; test once)')
  parser.add_argument('--work', default='',
                      help='keep the trained models here (default: a temp dir)')
  parser.add_argument('--no-tta', action='store_true',
                      help='skip scoring flips / dihedral TTA after training')
  args = parser.parse_args()
  split = lambda name: [os.path.join(args.examples, f'Split-{name}', '*')]
  labels = preprocessing.read_labels(split('train'))
  results = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  work = args.work or tempfile.mkdtemp(prefix='real_data_quality_')
  for run in args.run:
    name, _, overrides = run.partition(':')
    settings = dict(configs.REAL_DATA_PRESET)
    settings.update({'model': name, **json.loads(overrides or '{}')})
    cfg = configs.Settings(**settings).trainer_config()
    out = os.path.join(work, f'{name}-{int(time.time())}')
    fn_args = FnArgs(train_files=split('train'), eval_files=split('eval'),
                     serving_model_dir=os.path.join(out, 'serving'),
                     model_run_dir=os.path.join(out, 'run'), custom_config=cfg)
    start = time.time()
    trainer.run_fn(fn_args)
    train_s = time.time() - start
    with open(os.path.join(out, 'run', trainer.HISTORY_FILE)) as f:
      history = json.load(f)
    result = {'model': name, 'overrides': json.loads(overrides or '{}'),
              'config': cfg, 'train_wall_s': round(train_s, 1),
              'epochs_run': len(history['history']['loss']),
              'phases': history['phases'],
              'train_counts': history['train_counts'],
              'split': args.split,
              **score(fn_args.serving_model_dir, split(args.split), labels)}
    if cfg.get('tta', 'none') == 'none' and not args.no_tta:
      result['tta_after_training'] = score_tta(
          fn_args.serving_model_dir, split(args.split), labels,
          cfg['image_size'])
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ('config', 'confusion', 'phases')}),
          flush=True)
    results.append(result)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
