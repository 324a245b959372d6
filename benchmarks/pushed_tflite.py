"""Size and 1-thread latency of a pushed version's .tflite files (issue 16).

For each pushed version directory (``skinlesion run`` writes them under
``<home>/serving_model/<pipeline>/<version>``) it converts the SavedModel's
TFLite signature to a plain float32 .tflite (the reference the size and
latency ratios are taken against; never shipped) and measures, for it and
for every pushed .tflite file:

* bytes on disk (a pushed file with its metadata);
* per-image latency (batch 1) in ``tf.lite.Interpreter(num_threads=1)``
  with its default XNNPACK delegate: after a warm-up, the files take turns
  on the same images in interleaved rounds, so machine load hits them
  alike; median and 90th percentile over rounds;
* top-1 agreement and balanced-accuracy drop against the SavedModel, as the
  pipeline's parity gate measured them on the test split (the manifest).

A model with metadata (``mixed_input``) has two references: the float32
conversion of its metadata-vector signature for its two-input files (fed
``metadata_vector.MISSING``: latency does not depend on the values) and of
its image-only signature for its ``image_only_*`` files.  The images are
seeded random pixels of the model's input size: these convolutional
networks do the same work on any pixels.

  .venv/bin/python benchmarks/pushed_tflite.py VERSION_DIR [VERSION_DIR ...] \\
      --out benchmarks/results/pushed_tflite.json
  .venv/bin/python benchmarks/pushed_tflite.py --render RESULTS_JSON
"""

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from mobile_export import release  # pylint: disable=g-import-not-at-top
from mobile_export import tflite  # pylint: disable=g-import-not-at-top
from models import metadata_vector  # pylint: disable=g-import-not-at-top

FLOAT32 = 'float32'


def files_of(version_dir: str, work: str) -> Dict[str, Dict]:
  """Every pushed .tflite of the version and the float32 reference(s):
  name -> {path, reference (the float32 row it is compared with), parity}.

  The float32 files are converted here into ``work``."""
  manifest = release.verify_version(version_dir)
  pushed = {fmt: entry for fmt, entry in manifest['parity']['formats'].items()
            if entry.get('pushed')}
  reference = lambda variant: (tflite.IMAGE_ONLY_PREFIX if variant
                               else '') + FLOAT32
  rows = {}  # Each reference, then the pushed files compared with it.
  for variant in sorted({tflite.base_format(fmt)[1] for fmt in pushed}
                        or {False}):
    path = os.path.join(work, f'model_{reference(variant)}.tflite')
    with open(path, 'wb') as f:
      f.write(tflite.converter(version_dir, tflite.signature_key(
          version_dir, image_only=variant)).convert())
    rows[reference(variant)] = {'path': path, 'reference': None}
    for fmt, entry in sorted(pushed.items()):
      if tflite.base_format(fmt)[1] == variant:
        rows[fmt] = {'path': os.path.join(version_dir, entry['file']),
                     'reference': reference(variant), 'parity': entry}
  return rows


def measure_latency(paths: Dict[str, str], images: int, rounds: int,
                    warmup: int, seed: int, threads: int = 1) -> Dict:
  """name -> {median_ms, p90_ms} per image; the files interleaved."""
  runners = {}
  rng = np.random.default_rng(seed)
  for name, path in paths.items():
    with open(path, 'rb') as f:
      buffer = f.read()
    interpreter = tf.lite.Interpreter(model_content=buffer,
                                      num_threads=threads)
    interpreter.allocate_tensors()
    image, vector = tflite.input_tensors(buffer)
    size = int(image['shape'][1])
    pixels = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    out = interpreter.get_output_details()[0]

    def run(i, interpreter=interpreter, image=image, vector=vector,
            pixels=pixels, out=out):
      interpreter.set_tensor(image['index'], tflite.model_input(
          pixels[i:i + 1], image['dtype']))
      if vector is not None:
        interpreter.set_tensor(vector['index'],
                               metadata_vector.MISSING[None].copy())
      interpreter.invoke()
      interpreter.get_tensor(out['index'])

    runners[name] = run
  for run in runners.values():
    for i in range(warmup):
      run(i % images)
  per_round = {name: [] for name in runners}
  chunk = max(1, images // rounds)
  for r in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      for i in range(r * chunk, (r + 1) * chunk):
        run(i % images)
      per_round[name].append((time.perf_counter() - start) / chunk)
  return {name: {'median_ms': 1000 * float(np.median(v)),
                 'p90_ms': 1000 * float(np.percentile(v, 90)),
                 'rounds': rounds, 'images_per_round': chunk}
          for name, v in per_round.items()}


def benchmark(version_dir: str, images: int = 200, rounds: int = 10,
              warmup: int = 20, seed: int = 0) -> Dict:
  """The results of one version (see the module docstring)."""
  with tempfile.TemporaryDirectory() as work:
    rows = files_of(version_dir, work)
    latency = measure_latency({n: r['path'] for n, r in rows.items()},
                              images, rounds, warmup, seed)
    out = {}
    for name, row in rows.items():
      reference = rows.get(row['reference']) if row['reference'] else None
      size = os.path.getsize(row['path'])
      entry = {'bytes': size, 'latency_1_thread': latency[name]}
      if reference is not None:
        entry['bytes_vs_float32'] = size / os.path.getsize(reference['path'])
        entry['latency_vs_float32'] = (
            latency[name]['median_ms'] /
            latency[row['reference']]['median_ms'])
        parity = row['parity']
        for key in ('passed', 'top1_agreement', 'top1_agreement_interval',
                    'balanced_accuracy_drop',
                    'balanced_accuracy_drop_interval'):
          entry[key] = parity.get(key)
      out[name] = entry
  return {'version_dir': os.path.abspath(version_dir),
          'load_average': os.getloadavg(), 'files': out}


def _interval(value) -> str:
  if not value or value.get('value') is None:
    return '-'
  if value.get('lower') is None:
    return f'{value["value"]:.3f}'
  return f'{value["value"]:.3f} [{value["lower"]:.3f}, {value["upper"]:.3f}]'


def _points(value) -> str:
  if not value or value.get('value') is None:
    return '-'
  scaled = {k: (None if v is None else 100 * v) for k, v in value.items()}
  if scaled.get('lower') is None:
    return f'{scaled["value"]:+.2f}'
  return (f'{scaled["value"]:+.2f} [{scaled["lower"]:+.2f}, '
          f'{scaled["upper"]:+.2f}]')


def render_markdown(results: List[Dict]) -> str:
  """One table per version."""
  lines = []
  for result in results:
    lines += [f'`{result["label"]}` ({result["version_dir"]}; load average '
              f'{result["load_average"][0]:.2f})', '',
              '| file | bytes | x float32 | 1 thread, ms (p90) | x float32 | '
              'top-1 agreement | BA drop (points) |',
              '|---|---:|---:|---|---:|---|---|']
    for name, e in result['files'].items():
      latency = e['latency_1_thread']
      lines.append(
          f'| {name} | {e["bytes"]:,} | '
          f'{e.get("bytes_vs_float32", 1.0):.2f} | '
          f'{latency["median_ms"]:.2f} ({latency["p90_ms"]:.2f}) | '
          f'{e.get("latency_vs_float32", 1.0):.2f} | '
          f'{_interval(e.get("top1_agreement_interval"))} | '
          f'{_points(e.get("balanced_accuracy_drop_interval"))} |')
    lines.append('')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('versions', nargs='*', metavar='[LABEL=]VERSION_DIR')
  parser.add_argument('--out')
  parser.add_argument('--images', type=int, default=200)
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--render', metavar='RESULTS_JSON')
  args = parser.parse_args(argv)
  if args.render:
    with open(args.render) as f:
      print(render_markdown(json.load(f)))
    return 0
  if not args.versions:
    parser.error('give at least one pushed version directory')
  results = []
  for given in args.versions:
    label, _, path = given.rpartition('=')
    result = benchmark(path, args.images, args.rounds)
    result['label'] = label or os.path.basename(os.path.normpath(path))
    results.append(result)
  text = render_markdown(results)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
