"""How the parity gate's balanced-accuracy bound was chosen (issue 15).

Takes a finished run's trained SavedModel and test split, scores the test
images, then flips the top-1 answer of k correctly classified images of one
rare class (a hand-made "converted" model that misses k of them) and prints
the parity gate's intervals for each k.

  .venv/bin/python benchmarks/parity_bound.py --home tfx_home --image-size 64
"""

import argparse
import glob
import os

import numpy as np

from components import intervals
from mobile_export import data
from mobile_export import parity
from pipeline import configs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--home', required=True, help='a run\'s --home')
  parser.add_argument('--image-size', type=int, required=True)
  parser.add_argument('--label', default='df', help='the rare class')
  parser.add_argument('--flips', type=int, nargs='+', default=[1, 2])
  args = parser.parse_args()
  root = os.path.join(args.home, 'pipelines', configs.PIPELINE_NAME)
  test = sorted(glob.glob(os.path.join(
      root, 'ImageExampleGen', 'examples', '*', f'Split-{configs.TEST_SPLIT}'
  )))[-1]
  model = sorted(glob.glob(os.path.join(root, 'Trainer', 'model', '*',
                                        'Format-Serving')))[-1]
  files = [os.path.join(test, '*')]
  pixels, labels = data.load_images(files, args.image_size)
  lesions = data.lesion_ids(files)
  reference = parity.saved_model_predict(model, pixels)
  settings = configs.Settings()
  gate = parity.Thresholds(settings.tflite_min_top1_agreement,
                           settings.tflite_max_balanced_accuracy_drop)
  c = list(configs.LABELS).index(args.label)
  right = np.flatnonzero((labels == c) & (reference.argmax(1) == c))
  print(f'{args.label}: {(labels == c).sum()} test images, '
        f'{len(set(lesions[labels == c]))} lesions, {len(right)} recalled')
  for k in args.flips:
    candidate = reference.copy()
    for row in right[:k]:
      candidate[row] = np.roll(candidate[row], 1)
    result = parity.compare('hand-flipped', reference, candidate, labels,
                            configs.LABELS, gate, lesions, seed=settings.seed)
    verdict = ('passes' if result.passed
               else 'refused: ' + '; '.join(result.reasons))
    print(f'{k} flipped: agreement '
          f'{intervals.text(result.top1_agreement_interval)}, drop '
          f'{intervals.text(result.balanced_accuracy_drop_interval)}: '
          f'{verdict}')


if __name__ == '__main__':
  main()
