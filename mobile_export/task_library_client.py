"""A reference app-side client: the TFLite Task Library, metadata only.

Classifies JPEG files with ``tflite_support.task.vision.ImageClassifier`` as
an Android app would (the Python bindings wrap the same C++ Task Library):
decoding, resizing, normalization and label names all come from the
model's metadata; this file has no pre-processing code.

It must run where tflite-support is installed WITHOUT TensorFlow (the two
cannot share a process, see ../shared/STACK.md): ``.venv-tflite``, made by
``make setup``.  Run it as a script, not as part of the ``mobile_export``
package (whose other modules import TensorFlow):

  .venv-tflite/bin/python mobile_export/task_library_client.py \\
      MODEL.tflite IMAGE.jpg [IMAGE.jpg ...] [--threads N]

It prints one JSON object: the model metadata's name, version and labels,
and for each image every class's score in label order and the top-1.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

if __name__ == '__main__':
  # Run as a file: this folder's modules (tflite.py, data.py, ...) must not
  # shadow installed ones.
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _here]


def classify(model_path: str, image_paths: Sequence[str],
             num_threads: int = 1) -> Dict[str, Any]:
  """Runs the Task Library's ImageClassifier on each image file."""
  # Imported here so that `--help` works anywhere.
  from tflite_support import metadata  # pylint: disable=g-import-not-at-top
  from tflite_support.task import core  # pylint: disable=g-import-not-at-top
  from tflite_support.task import processor  # pylint: disable=g-import-not-at-top
  from tflite_support.task import vision  # pylint: disable=g-import-not-at-top

  displayer = metadata.MetadataDisplayer.with_model_file(model_path)
  model_metadata = json.loads(displayer.get_metadata_json())
  labels = displayer.get_associated_file_buffer('labels.txt').decode(
      'utf-8').split('\n')
  labels = [name for name in labels if name]

  options = vision.ImageClassifierOptions(
      base_options=core.BaseOptions(file_name=model_path,
                                    num_threads=num_threads),
      classification_options=processor.ClassificationOptions(
          max_results=-1))  # Every class, not only the best ones.
  classifier = vision.ImageClassifier.create_from_options(options)
  results: List[Dict[str, Any]] = []
  for path in image_paths:
    image = vision.TensorImage.create_from_file(path)
    categories = classifier.classify(image).classifications[0].categories
    scores = [0.0] * len(labels)
    names = [''] * len(labels)
    for category in categories:
      scores[category.index] = float(category.score)
      names[category.index] = category.category_name
    # Ties (int8 scores are multiples of 1/256) go to the lowest index, as
    # numpy's argmax does.
    top1 = max(range(len(scores)), key=lambda i: (scores[i], -i))
    results.append({'image': path, 'scores': scores, 'names': names,
                    'top1': top1, 'top1_label': names[top1]})
  return {'model': model_path, 'name': model_metadata.get('name'),
          'version': model_metadata.get('version'), 'labels': labels,
          'results': results}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('model')
  parser.add_argument('images', nargs='+')
  parser.add_argument('--threads', type=int, default=1)
  args = parser.parse_args(argv)
  if 'tensorflow' in sys.modules:
    print('error: TensorFlow is loaded; run this with tflite-support alone',
          file=sys.stderr)
    return 2
  print(json.dumps(classify(args.model, args.images, args.threads)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
