"""The official ISIC scorer on `skinlesion predict --format isic` output.

Writes the test split of an ingested HAM10000 archive as image files (named
by image id, as the ISIC challenge names them) and its ground truth in the
ISIC 2018 Task 3 layout (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC, one-hot),
runs the project's own CLI, `skinlesion predict --format isic` (with
`--metadata`, the archive's HAM10000_metadata.csv, for a model that takes
patient metadata), and scores its CSV with the ISIC Challenge's own scorer,
`isic-challenge-scoring` from PyPI, installed in a venv of its own (it pins
an old pandas the project's lock cannot hold):

  python3.10 -m venv /tmp/isic-venv
  /tmp/isic-venv/bin/pip install isic-challenge-scoring==5.6.0
  .venv/bin/python benchmarks/isic_scorer.py \\
      --examples runs/ham/pipelines/skin-lesion-tfx/ImageExampleGen/examples/1 \\
      --model runs/ham/serving_model/skin-lesion-tfx/VERSION \\
      --metadata ../shared/data/ham10000/HAM10000_metadata.csv \\
      --scorer /tmp/isic-venv/bin/isic-challenge-scoring \\
      --out benchmarks/results/isic_scorer.json

It prints the scorer's balanced accuracy (its target metric) next to the
one computed here from the same CSV, which must agree (the file is accepted
by the scorer and read as meant), and the scorer's per-class AUC.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from models import features  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_split(examples_dir: str, split: str, out_dir: str):
  """The split's images as <image_id>.jpg; [(image_id, label name)]."""
  files = [os.path.join(examples_dir, f'Split-{split}', '*')]
  labels = preprocessing.read_labels(files)
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for record in preprocessing.read_examples(files):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    image_id = feature[features.IMAGE_ID_KEY].bytes_list.value[0].decode()
    with open(os.path.join(out_dir, image_id + '.jpg'), 'wb') as f:
      f.write(feature[features.IMAGE_KEY].bytes_list.value[0])
    rows.append((image_id, labels[feature[features.LABEL_KEY].int64_list
                                  .value[0]]))
  return rows


def write_truth(rows, path: str) -> None:
  """ISIC 2018 Task 3 ground truth: image + one-hot columns."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image'] + list(configs.ISIC2018_COLUMN_ORDER))
    for image_id, label in rows:
      column = configs.ISIC2018_COLUMNS[label]
      writer.writerow([image_id] + ['1.0' if c == column else '0.0'
                                    for c in configs.ISIC2018_COLUMN_ORDER])


def own_scores(truth_csv: str, predictions_csv: str) -> dict:
  """Balanced accuracy (mean per-class recall of the arg-max) and each
  class's recall, from the two CSVs."""
  def read(path):
    with open(path) as f:
      return {r['image']: r for r in csv.DictReader(f)}
  truth, predicted = read(truth_csv), read(predictions_csv)
  assert set(truth) == set(predicted), 'images differ'
  columns = list(configs.ISIC2018_COLUMN_ORDER)
  y = np.array([columns.index(max(columns, key=lambda c: float(r[c])))
                for r in (truth[i] for i in sorted(truth))])
  p = np.array([columns.index(max(columns, key=lambda c: float(r[c])))
                for r in (predicted[i] for i in sorted(truth))])
  recall = {c: float((p[y == k] == k).mean()) for k, c in enumerate(columns)
            if (y == k).any()}
  return {'balanced_accuracy': float(np.mean(list(recall.values()))),
          'accuracy': float((p == y).mean()), 'recall': recall,
          'images': int(len(y))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True,
                      help='an ImageExampleGen Examples artifact folder')
  parser.add_argument('--split', default=configs.TEST_SPLIT)
  parser.add_argument('--model', required=True, help='a pushed version')
  parser.add_argument('--metadata', help='HAM10000_metadata.csv, for a '
                      'model that takes patient metadata')
  parser.add_argument('--tflite', metavar='FORMAT',
                      help='predict with the pushed .tflite of this format '
                      '(e.g. image_only_int8) instead of the SavedModel')
  parser.add_argument('--scorer', required=True,
                      help='the isic-challenge-scoring executable')
  parser.add_argument('--work-dir', help='scratch folder (default: temp)')
  parser.add_argument('--out', help='JSON results file')
  args = parser.parse_args(argv)
  work = args.work_dir or tempfile.mkdtemp(prefix='isic_scorer_')
  rows = write_split(args.examples, args.split, os.path.join(work, 'images'))
  truth = os.path.join(work, 'truth.csv')
  write_truth(rows, truth)
  predictions = os.path.join(work, 'predictions.csv')
  command = [os.path.join(PROJECT_ROOT, '.venv', 'bin', 'skinlesion'),
             'predict', '--model', args.model, '--images',
             os.path.join(work, 'images'), '--out', predictions,
             '--format', 'isic']
  if args.metadata:
    command += ['--metadata', args.metadata]
  if args.tflite:
    command += ['--tflite', args.tflite]
  subprocess.run(command, check=True)
  scored = subprocess.run([args.scorer, '-o', 'json', 'classification',
                           truth, predictions], check=True,
                          capture_output=True, text=True)
  official = json.loads(scored.stdout)
  own = own_scores(truth, predictions)
  result = {
      'model': os.path.abspath(args.model), 'split': args.split,
      'metadata': bool(args.metadata), 'tflite': args.tflite,
      'images': own['images'],
      # The scorer's target metric (its 'overall'): balanced accuracy of
      # the arg-max class.
      'scorer_balanced_accuracy': official['aggregate']['balanced_accuracy'],
      'own_balanced_accuracy': own['balanced_accuracy'],
      'own_accuracy': own['accuracy'],
      'own_recall': own['recall'],
      # Per class, one-vs-rest: AUC, and sensitivity at the 0.5 threshold.
      'scorer_auc': official['per_category']['auc'],
      'scorer_sensitivity_at_0.5': official['per_category']['sensitivity'],
      'scorer_macro_auc': official['macro_average']['auc'],
  }
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  agree = abs(result['scorer_balanced_accuracy'] -
              result['own_balanced_accuracy']) < 1e-6
  print('scorer and project agree' if agree else 'MISMATCH')
  return 0 if agree else 1


if __name__ == '__main__':
  sys.exit(main())
