"""Runs the whole pipeline twice from scratch; compares what it produced.

Same data, same settings, same seed, two fresh homes (no cache shared):

* the Examples (TFRecords, per split) and the splits (image ids per split);
* the training history (loss per epoch) and the trained weights (bits);
* the Evaluator's test-split metrics (max absolute difference).

  python benchmarks/reproducibility.py --data demo_data [--epochs 3]

Without --data it generates the tiny test archive (179 images).
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile
import time

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
sys.argv = sys.argv[:1] + [a for a in sys.argv[1:]]

from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import demo_data  # pylint: disable=g-import-not-at-top
from pipeline import local_runner  # pylint: disable=g-import-not-at-top
from pipeline import summary  # pylint: disable=g-import-not-at-top


def _digest(paths):
  h = hashlib.sha256()
  for path in sorted(paths):
    with open(path, 'rb') as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def _outputs(settings):
  run = summary.latest_run(settings)
  root = settings.pipeline_root
  examples = {os.path.basename(d): _digest(glob.glob(os.path.join(d, '*')))
              for d in glob.glob(os.path.join(root, 'ImageExampleGen',
                                              'examples', '*', 'Split-*'))}
  (history_path,) = glob.glob(os.path.join(root, 'Trainer', 'model_run', '*',
                                           'history.json'))
  with open(history_path) as f:
    history = json.load(f)['history']
  # The export lists the variables in a varying order, so the checkpoint
  # files differ; the weights are compared as a multiset of tensors.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  (index,) = glob.glob(os.path.join(root, 'Trainer', 'model', '*',
                                    'Format-Serving', 'variables',
                                    'variables.index'))
  reader = tf.train.load_checkpoint(index[:-len('.index')])
  variables = sorted(
      hashlib.sha256(str(reader.get_tensor(k).shape).encode()
                     + reader.get_tensor(k).tobytes()).hexdigest()
      for k in reader.get_variable_to_shape_map() if 'VARIABLE_VALUE' in k)
  return examples, history, variables, run.metrics, run.per_class_recall


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data')
  parser.add_argument('--layout', default='ham10000')
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--image-size', type=int, default=32)
  args = parser.parse_args(argv)
  work = tempfile.mkdtemp(prefix='reproducibility-')
  data = args.data
  if not data:
    data = os.path.join(work, 'archive')
    demo_data.generate(data, per_class=7, seed=1)
  results = []
  for name in ('a', 'b'):
    settings = configs.Settings(
        data_root=data, layout=args.layout, home=os.path.join(work, name),
        epochs=args.epochs, image_size=args.image_size, width=0.25,
        batch_size=16, min_balanced_accuracy=0.0,
        max_balanced_accuracy_drop=1.0, tflite_min_top1_agreement=0.0,
        tflite_max_balanced_accuracy_drop=1.0,
        split_buckets={'train': 2, 'eval': 1, 'test': 1},
        require_every_class_in_every_split=False)
    start = time.time()
    local_runner.run(settings)
    print(f'run {name}: {time.time() - start:.0f} s', flush=True)
    results.append(_outputs(settings))
  (ex_a, hist_a, var_a, met_a, rec_a), (ex_b, hist_b, var_b, met_b,
                                        rec_b) = results
  print('Examples (sha256 per split) identical:', ex_a == ex_b, ex_a)
  print('Training history identical:', hist_a == hist_b)
  print(f'Trained weights ({len(var_a)} tensors) bit-identical:',
        var_a == var_b)
  diffs = {k: abs(met_a[k] - met_b[k]) for k in met_a}
  diffs.update({f'recall/{k}': abs(rec_a[k] - rec_b[k])
                for k in rec_a if rec_a[k] == rec_a[k]})
  print('Test metrics, run a:', json.dumps(met_a, sort_keys=True))
  print(f'Max |metric difference|: {max(diffs.values()):.3g}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
