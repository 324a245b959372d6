"""The TFLite Task Library against tf.lite.Interpreter on one pushed file.

Classifies JPEG files with the Task Library's ImageClassifier, as an app
would (``mobile_export/task_library_client.py`` in ``.venv-tflite``: every
pre-processing step from the file's metadata, no code of ours), and with
``tf.lite.Interpreter`` fed the pipeline's own decode and resize
(``models/preprocessing.py``), and reports their top-1 agreement, the
largest score difference and how many images are near-ties (top-1 lead <=
``--tie``).  The e2e test does this on the demo; this script is for a
real-data version (README real-data command).

  .venv/bin/python benchmarks/task_library_agreement.py \\
      VERSION_DIR/model_image_only_int8.tflite JPEG_DIR [--limit N]
"""

import argparse
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from mobile_export import tflite  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(PROJECT_ROOT, 'mobile_export', 'task_library_client.py')
DEFAULT_PYTHON = os.path.join(PROJECT_ROOT, '.venv-tflite', 'bin', 'python')


def task_library(python: str, model_path: str, jpegs,
                 timeout: float = 300) -> dict:
  """mobile_export/task_library_client.py's JSON, run by that Python (a
  venv without TensorFlow, which cannot share a process with it)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('PYTHON') and k != 'TF_USE_LEGACY_KERAS'}
  done = subprocess.run([python, CLIENT, model_path, *jpegs],
                        capture_output=True, text=True, env=env,
                        timeout=timeout, check=False)
  if done.returncode != 0:
    raise RuntimeError(f'the Task Library client failed ({done.returncode}):'
                       f' {done.stderr[-3000:]}')
  return json.loads(done.stdout)


def compare(model_path: str, jpegs, python: str = DEFAULT_PYTHON,
            tie: float = 0.03) -> dict:
  """Agreement of the Task Library with the Interpreter on these JPEGs."""
  answer = task_library(python, model_path, jpegs)
  library = np.array([r['scores'] for r in answer['results']])
  with open(model_path, 'rb') as f:
    buffer = f.read()
  image, vector = tflite.input_tensors(buffer)
  if vector is not None:
    raise ValueError(f'{model_path} takes metadata: the Task Library image '
                     'classifier feeds one image (use an image-only file)')
  size = int(image['shape'][1])
  pixels = np.stack([preprocessing.decode_and_resize(
      tf.io.read_file(jpeg), size).numpy() for jpeg in jpegs])
  ours = tflite.predict(buffer, pixels)
  top1 = np.array([r['top1'] for r in answer['results']])
  ranked = np.sort(ours, axis=1)
  lead = ranked[:, -1] - ranked[:, -2]
  agree = top1 == ours.argmax(1)
  return {'model': model_path, 'images': len(jpegs),
          'labels': answer['labels'], 'version': answer['version'],
          'top1_agreement': float(agree.mean()),
          'top1_agreement_outside_near_ties': float(
              agree[lead > tie].mean()) if (lead > tie).any() else None,
          'near_ties': int((lead <= tie).sum()),
          'max_score_difference': float(np.abs(library - ours).max()),
          # The Task Library's scores are the file's probabilities: they
          # sum to 1 up to its float formatting.
          'max_sum_error': float(np.abs(library.sum(axis=1) - 1).max()),
          'mean_score_difference': float(np.abs(library - ours).mean())}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('model', help='an image-only .tflite with metadata')
  parser.add_argument('jpegs', help='a folder of JPEG files (searched '
                      'recursively)')
  parser.add_argument('--limit', type=int, default=0,
                      help='the first N files by name (0: all)')
  parser.add_argument('--python', default=DEFAULT_PYTHON,
                      help='the Python of a venv with tflite-support alone')
  parser.add_argument('--tie', type=float, default=0.03)
  args = parser.parse_args(argv)
  jpegs = sorted(glob.glob(os.path.join(args.jpegs, '**', '*.jpg'),
                           recursive=True))
  if args.limit:
    jpegs = jpegs[:args.limit]
  if not jpegs:
    parser.error(f'no .jpg files under {args.jpegs}')
  print(json.dumps(compare(args.model, jpegs, args.python, args.tie),
                   indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
