"""Beam DirectRunner, in_memory vs multi_processing, by archive size.

Runs the pipeline's two data stages, ImageExampleGen and StatisticsGen (the
executors the pipeline uses, with its settings), on archives of increasing
size, once per Beam mode, each in a fresh Python process, and prints a
Markdown table of wall-clock seconds.  BENCHMARKS.md records one run.

  python benchmarks/beam_direct_runner.py --per-class 7 40 \\
      --ham10000 ../shared/data/ham10000 --ham10000-copies 1 3 --workers 2

Archives: generated ones (pipeline/demo_data.py, ``--per-class`` N gives
about 25.6 x N images) and, with ``--ham10000``, a real HAM10000-layout
folder, also as K copies of itself (``--ham10000-copies``: a scratch folder
of symbolic links under new image and lesion ids, so K times the images
without copying them).  Every image file is read once before timing, so that
no mode pays for a cold disk cache.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stages(data_root: str, workers: int, work_dir: str) -> dict:
  """Times the two stages in this process; returns seconds per stage."""
  sys.path.insert(0, PROJECT_ROOT)
  # pylint: disable=g-import-not-at-top
  from tfx.components.statistics_gen import executor as statistics_executor
  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts
  from tfx.utils import proto_utils
  from components import image_example_gen
  from pipeline import configs
  from pipeline import pipeline as pipeline_lib
  # pylint: enable=g-import-not-at-top

  settings = configs.Settings(
      data_root=data_root, home=os.path.join(work_dir, 'home'),
      beam_pipeline_args=configs.direct_beam_args(workers))
  components = {c.id: c for c in pipeline_lib.create_pipeline(
      settings).components}

  def exec_properties(component_id):
    return {k: (proto_utils.proto_to_json(v) if hasattr(v, 'DESCRIPTOR')
                else v)
            for k, v in components[component_id].exec_properties.items()}

  def context():
    return base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=list(settings.beam_pipeline_args),
        tmp_dir=os.path.join(work_dir, 'tmp'), unique_id='1')

  examples = standard_artifacts.Examples()
  examples.uri = os.path.join(work_dir, 'examples')
  start = time.perf_counter()
  image_example_gen.Executor(context()).Do(
      {}, {'examples': [examples]}, exec_properties('ImageExampleGen'))
  ingest = time.perf_counter() - start
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = os.path.join(work_dir, 'statistics')
  start = time.perf_counter()
  statistics_executor.Executor(context()).Do(
      {'examples': [examples]}, {'statistics': [statistics]},
      exec_properties('StatisticsGen'))
  stats = time.perf_counter() - start
  with open(os.path.join(examples.uri, image_example_gen.REPORT_FILE)) as f:
    count = json.load(f)['examples']
  return {'images': count, 'ImageExampleGen': ingest, 'StatisticsGen': stats}


def _measure(data_root: str, workers: int, work_root: str) -> dict:
  """run_stages in a fresh interpreter (imports and tracing not shared)."""
  work_dir = tempfile.mkdtemp(dir=work_root)
  result = subprocess.run(
      [sys.executable, __file__, '--one', data_root, str(workers), work_dir],
      capture_output=True, text=True, check=False,
      # Beam's worker processes import the project too.
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
               PYTHONPATH=os.pathsep.join(
                   p for p in (PROJECT_ROOT, os.environ.get('PYTHONPATH'))
                   if p)))
  if result.returncode:
    raise RuntimeError(f'{data_root} with {workers} worker(s) failed:\n'
                       + result.stderr[-4000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def _replicate(source: str, copies: int, out: str) -> str:
  """A HAM10000-layout view of `copies` x the source archive (symlinks)."""
  import csv  # pylint: disable=g-import-not-at-top
  images = {}
  for dirpath, _, filenames in os.walk(source):
    for name in filenames:
      if name.lower().endswith('.jpg'):
        images[os.path.splitext(name)[0]] = os.path.join(dirpath, name)
  os.makedirs(os.path.join(out, 'images'), exist_ok=True)
  with open(os.path.join(source, 'HAM10000_metadata.csv')) as f:
    reader = csv.DictReader(f)
    rows, fields = list(reader), reader.fieldnames
  with open(os.path.join(out, 'HAM10000_metadata.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for copy in range(copies):
      for row in rows:
        new = dict(row, image_id=f'{row["image_id"]}_c{copy}',
                   lesion_id=f'{row["lesion_id"]}_c{copy}')
        os.symlink(images[row['image_id']],
                   os.path.join(out, 'images', new['image_id'] + '.jpg'))
        writer.writerow(new)
  return out


def _warm(data_root: str) -> None:
  for dirpath, _, filenames in os.walk(data_root):
    for name in filenames:
      with open(os.path.join(dirpath, name), 'rb') as f:
        f.read()


def _machine() -> str:
  model = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      model = next((l.split(':', 1)[1].strip() for l in f
                    if l.startswith('model name')), '')
  return (f'{os.cpu_count()} CPU cores ({model or platform.machine()}), '
          f'Python {platform.python_version()}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--per-class', type=int, nargs='*', default=[7, 40, 160],
                      help='generated archives, rarest-class image counts')
  parser.add_argument('--ham10000', help='a real HAM10000-layout folder')
  parser.add_argument('--ham10000-copies', type=int, nargs='*', default=[1],
                      help='also time K copies of it (default: 1, itself)')
  parser.add_argument('--workers', type=int, default=2,
                      help='multi_processing worker processes (default 2)')
  parser.add_argument('--work-dir', help='scratch folder (default: a temp dir)')
  parser.add_argument('--one', nargs=3, metavar=('DATA', 'WORKERS', 'OUT'),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    data_root, workers, work_dir = args.one
    print(json.dumps(run_stages(data_root, int(workers), work_dir)))
    return 0

  sys.path.insert(0, PROJECT_ROOT)
  from pipeline import demo_data  # pylint: disable=g-import-not-at-top
  work_root = args.work_dir or tempfile.mkdtemp(prefix='beam_bench_')
  archives = []
  for per_class in args.per_class:
    root = os.path.join(work_root, f'demo_{per_class}')
    demo_data.generate(root, per_class=per_class, seed=0)
    archives.append((f'generated, --per-class {per_class}', root))
  for copies in (args.ham10000_copies if args.ham10000 else []):
    if copies == 1:
      archives.append(('HAM10000 subset (real, 200x150)', args.ham10000))
    else:
      archives.append((f'HAM10000 subset x{copies} (symlinks)', _replicate(
          args.ham10000, copies, os.path.join(work_root, f'ham_x{copies}'))))

  print(f'Machine: {_machine()}; load average at start: '
        f'{os.getloadavg()[0]:.2f}', flush=True)
  rows = []
  begin = time.perf_counter()
  for name, root in archives:
    _warm(root)
    single = _measure(root, 1, work_root)
    multi = _measure(root, args.workers, work_root)
    rows.append((name, single, multi))
    print(f'  {name}: {single} | {multi}', file=sys.stderr, flush=True)
  print(f'Total {time.perf_counter() - begin:.0f} s; load average at end: '
        f'{os.getloadavg()[0]:.2f}\n')
  print('| archive | images | in_memory: ExampleGen / StatisticsGen / total (s)'
        f' | multi_processing x{args.workers}: ExampleGen / StatisticsGen / '
        'total (s) | in_memory / multi_processing |')
  print('|---|---:|---|---|---:|')
  for name, single, multi in rows:
    totals = [r['ImageExampleGen'] + r['StatisticsGen']
              for r in (single, multi)]
    print(f'| {name} | {single["images"]} | '
          f'{single["ImageExampleGen"]:.1f} / {single["StatisticsGen"]:.1f} / '
          f'{totals[0]:.1f} | {multi["ImageExampleGen"]:.1f} / '
          f'{multi["StatisticsGen"]:.1f} / {totals[1]:.1f} | '
          f'{totals[0] / totals[1]:.2f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
