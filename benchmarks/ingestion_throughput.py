"""Ingestion throughput: ImageExampleGen on a real archive, runner vs runner.

Measures, in one process and one session, side by side:
  * the raw floor: `cat` of every image file into one file (read + write the
    same bytes, no decoding);
  * ImageExampleGen's executor (listing, full image checks, duplicate
    detection, tf.Example, lesion-hash splits, GZIP TFRecords, report) on
    Beam's DirectRunner in_memory (1 worker), and multi_processing with N
    workers.
The page cache is warmed first so every contender reads from memory.

  .venv/bin/python benchmarks/ingestion_throughput.py \
      --data ../shared/data/ham10000 [--workers 2] [--repeats 2]
"""

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import image_example_gen as ieg
from pipeline import configs
from pipeline import tempfiles


def _image_files(root):
  listing = ieg.list_archive(root, 'ham10000', configs.LABELS)
  return [r['path'] for r in listing.records]


def raw_floor(files, out_dir):
  target = os.path.join(out_dir, 'all_images.bin')
  start = time.perf_counter()
  with open(target, 'wb') as out:
    subprocess.run(['xargs', '-0', 'cat'], input='\0'.join(files).encode(),
                   stdout=out, check=True)
  return time.perf_counter() - start


def run_executor(root, out_dir, beam_args):
  component = ieg.ImageExampleGen(
      input_base=root, layout='ham10000', labels=configs.LABELS,
      split_buckets=configs.SPLIT_BUCKETS)
  exec_properties = {
      k: (proto_utils.proto_to_json(v) if hasattr(v, 'DESCRIPTOR') else v)
      for k, v in component.exec_properties.items()}
  examples = standard_artifacts.Examples()
  examples.uri = out_dir
  executor = ieg.Executor(base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=beam_args, tmp_dir=tempfile.mkdtemp()))
  start = time.perf_counter()
  executor.Do({}, {'examples': [examples]}, exec_properties)
  seconds = time.perf_counter() - start
  with open(os.path.join(out_dir, ieg.REPORT_FILE)) as f:
    report = json.load(f)
  return seconds, report


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  root = os.path.abspath(args.data)
  files = _image_files(root)
  for path in files:  # Warm the page cache.
    with open(path, 'rb') as f:
      f.read()
  contenders = {
      'raw floor (cat into one file)': None,
      'DirectRunner in_memory, 1 worker': [
          '--direct_running_mode=in_memory', '--direct_num_workers=1'],
      f'DirectRunner multi_processing, {args.workers} workers': [
          '--direct_running_mode=multi_processing',
          f'--direct_num_workers={args.workers}'],
  }
  results = {name: [] for name in contenders}
  for repeat in range(args.repeats):
    for name, beam_args in contenders.items():
      with tempfile.TemporaryDirectory() as tmp:
        if beam_args is None:
          seconds = raw_floor(files, tmp)
        else:
          seconds, report = run_executor(root, os.path.join(tmp, 'ex'),
                                         beam_args)
          assert report['examples'] + report['quarantined'] == len(files)
      results[name].append(seconds)
      print(f'repeat {repeat + 1}: {name}: {seconds:.2f} s', flush=True)
  best_floor = min(results['raw floor (cat into one file)'])
  print(f'\n{len(files)} images, {os.cpu_count()} CPUs, '
        f'{platform.platform()}; best of {args.repeats}\n')
  print('| contender | seconds | images/s | x raw floor time |')
  print('|---|---|---|---|')
  for name, times in results.items():
    best = min(times)
    print(f'| {name} | {best:.2f} | {len(files) / best:,.0f} | '
          f'{best / best_floor:.1f} |')


if __name__ == '__main__':
  with tempfiles.scratch_tempdir():  # TFX's sdist per executor (tempfiles.py)
    main()
