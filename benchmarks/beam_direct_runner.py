"""Beam runners side by side, by archive size: the DirectRunner in_memory
and multi_processing, and a Flink cluster.

Runs the pipeline's two data stages, ImageExampleGen and StatisticsGen (the
executors the pipeline uses, with its settings), on archives of increasing
size, once per Beam mode, each in a fresh Python process, and prints a
Markdown table of wall-clock seconds.  BENCHMARKS.md records the runs.

  python benchmarks/beam_direct_runner.py --per-class 7 40 \\
      --ham10000 ../shared/data/ham10000 --ham10000-copies 1 3 --workers 2
  tools/flink_cluster.sh start
  python benchmarks/beam_direct_runner.py --per-class \\
      --ham10000 ../shared/data/ham10000 --ham10000-copies 1 3 \\
      --modes in_memory flink --flink localhost:8081

``flink``: pipeline/beam_args.local_flink_beam_args (FlinkRunner, Beam's job server,
LOOPBACK SDK harness in the launching process, parallelism 2).

Archives: generated ones (pipeline/demo_data.py, ``--per-class`` N gives
about 25.6 x N images) and, with ``--ham10000``, a real HAM10000-layout
folder, also as K copies of itself (``--ham10000-copies``: a scratch folder
under new image and lesion ids; copy 0 hard-linked, the others with a JPEG
comment naming the copy, since ingestion quarantines symlinks that leave the
data root and the same bytes under another lesion).  Every image file is read once before timing, so that
no mode pays for a cold disk cache.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def beam_args(mode: str) -> list:
  """A mode of --one: N (DirectRunner workers) or flink=HOST:PORT."""
  sys.path.insert(0, PROJECT_ROOT)
  from pipeline import beam_args as beam_args_lib  # pylint: disable=g-import-not-at-top
  if mode.startswith('flink='):
    return beam_args_lib.local_flink_beam_args(mode.split('=', 1)[1])
  return beam_args_lib.direct_beam_args(int(mode))


def _flink_get(master: str, path: str):
  import urllib.request  # pylint: disable=g-import-not-at-top
  with urllib.request.urlopen(f'http://{master}{path}', timeout=10) as r:
    return json.load(r)


def _flink_jobs(master: str, skip=()) -> dict:
  """job id -> (seconds, vertices, MB its vertices wrote: the shuffle) of
  the jobs that the Flink cluster at master (REST host:port) knows, but
  those in skip."""
  out = {}
  for job in _flink_get(master, '/jobs/overview')['jobs']:
    if job['jid'] in skip:
      continue
    vertices = _flink_get(master, f'/jobs/{job["jid"]}')['vertices']
    out[job['jid']] = (job['duration'] / 1000, len(vertices),
                       sum(v['metrics']['write-bytes'] for v in vertices)
                       / 1e6)
  return out


def run_stages(data_root: str, mode: str, work_dir: str) -> dict:
  """Times the two stages in this process; returns seconds per stage."""
  sys.path.insert(0, PROJECT_ROOT)
  # pylint: disable=g-import-not-at-top
  from tfx.components.statistics_gen import executor as statistics_executor
  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts
  from tfx.utils import proto_utils
  from components import image_example_gen
  from pipeline import beam_args as beam_args_lib
  from pipeline import configs
  from pipeline import pipeline as pipeline_lib
  # pylint: enable=g-import-not-at-top

  settings = configs.Settings(
      data_root=data_root, home=os.path.join(work_dir, 'home'),
      beam_pipeline_args=beam_args(mode))
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

  master = beam_args_lib.flink_master_of(settings.beam_pipeline_args)
  out = {}

  def timed(stage, run):
    known = ({job['jid'] for job in _flink_get(master, '/jobs/overview')[
        'jobs']} if master else set())
    start = time.perf_counter()
    run()
    out[stage] = time.perf_counter() - start
    if master:  # The Flink job(s) the stage submitted.
      jobs = list(_flink_jobs(master, skip=known).values())
      out[stage + ' on Flink'] = [sum(job[i] for job in jobs)
                                  for i in range(3)]

  examples = standard_artifacts.Examples()
  examples.uri = os.path.join(work_dir, 'examples')
  timed('ImageExampleGen', lambda: image_example_gen.Executor(context()).Do(
      {}, {'examples': [examples]}, exec_properties('ImageExampleGen')))
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = os.path.join(work_dir, 'statistics')
  timed('StatisticsGen', lambda: statistics_executor.Executor(context()).Do(
      {'examples': [examples]}, {'statistics': [statistics]},
      exec_properties('StatisticsGen')))
  with open(os.path.join(examples.uri, image_example_gen.REPORT_FILE)) as f:
    out['images'] = json.load(f)['examples']
  return out


def _measure(data_root: str, mode: str, work_root: str) -> dict:
  """run_stages in a fresh interpreter (imports and tracing not shared)."""
  work_dir = tempfile.mkdtemp(dir=work_root)
  result = subprocess.run(
      [sys.executable, __file__, '--one', data_root, mode, work_dir],
      capture_output=True, text=True, check=False,
      # Beam's worker processes import the project too.
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
               PYTHONPATH=os.pathsep.join(
                   p for p in (PROJECT_ROOT, os.environ.get('PYTHONPATH'))
                   if p)))
  if result.returncode:
    raise RuntimeError(f'{data_root} with mode {mode} failed:\n'
                       + result.stderr[-4000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def _replicate(source: str, copies: int, out: str) -> str:
  """A HAM10000-layout view of `copies` x the source archive."""
  import csv  # pylint: disable=g-import-not-at-top
  images = {}  # Absolute targets: the links live elsewhere.
  for dirpath, _, filenames in os.walk(os.path.abspath(source)):
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
        # Real files (ingestion quarantines symlinks that leave the data
        # root), each copy's bytes its own (it quarantines the same bytes
        # under another lesion): a JPEG comment segment naming the copy
        # after the start-of-image marker; the pixels are the original's.
        target = os.path.join(out, 'images', new['image_id'] + '.jpg')
        if copy == 0:
          try:
            os.link(images[row['image_id']], target)
          except OSError:
            shutil.copyfile(images[row['image_id']], target)
        else:
          with open(images[row['image_id']], 'rb') as f:
            data = f.read()
          assert data[:2] == b'\xff\xd8', images[row['image_id']]
          comment = f'copy {copy}'.encode()
          with open(target, 'wb') as f:
            f.write(data[:2] + b'\xff\xfe' + (len(comment) + 2).to_bytes(
                2, 'big') + comment + data[2:])
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
  parser.add_argument('--modes', nargs='+', default=['in_memory',
                                                    'multi_processing'],
                      choices=('in_memory', 'multi_processing', 'flink'),
                      help='the Beam modes to compare (the first is the '
                      'ratios\' reference)')
  parser.add_argument('--flink', default='localhost:8081',
                      help='the flink mode\'s cluster (REST host:port)')
  parser.add_argument('--work-dir', help='scratch folder (default: a temp dir)')
  parser.add_argument('--one', nargs=3, metavar=('DATA', 'MODE', 'OUT'),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    data_root, mode, work_dir = args.one
    print(json.dumps(run_stages(data_root, mode, work_dir)))
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
      archives.append((f'HAM10000 subset x{copies} (copies)', _replicate(
          args.ham10000, copies, os.path.join(work_root, f'ham_x{copies}'))))

  print(f'Machine: {_machine()}; load average at start: '
        f'{os.getloadavg()[0]:.2f}', flush=True)
  modes = {'in_memory': ('in_memory', '1'),
           'multi_processing': (f'multi_processing x{args.workers}',
                                str(args.workers)),
           'flink': ('Flink, 2 TaskManagers', f'flink={args.flink}')}
  modes = [modes[m] for m in args.modes]
  rows = []
  begin = time.perf_counter()
  for name, root in archives:
    _warm(root)
    results = [_measure(root, spec, work_root) for _, spec in modes]
    rows.append((name, results))
    print(f'  {name}: {results}', file=sys.stderr, flush=True)
  print(f'Total {time.perf_counter() - begin:.0f} s; load average at end: '
        f'{os.getloadavg()[0]:.2f}\n')
  print('| archive | images | ' + ' | '.join(
      f'{label}: ExampleGen / StatisticsGen / total (s)' for label, _ in modes)
        + ''.join(f' | {modes[0][0]} / {label}' for label, _ in modes[1:])
        + ' |')
  print('|---|---:|' + '---|' * len(modes) + '---:|' * (len(modes) - 1))
  for name, results in rows:
    totals = [r['ImageExampleGen'] + r['StatisticsGen'] for r in results]
    cells = [f'{r["ImageExampleGen"]:.1f} / {r["StatisticsGen"]:.1f} / '
             f'{total:.1f}' for r, total in zip(results, totals)]
    ratios = [f'{totals[0] / total:.2f}' for total in totals[1:]]
    print(f'| {name} | {results[0]["images"]} | ' + ' | '.join(cells + ratios)
          + ' |')
  flink = [(label, i) for i, (label, spec) in enumerate(modes)
           if spec.startswith('flink=')]
  if flink:
    print('\nWhere the Flink time goes (Flink REST API: job duration, '
          'vertices, MB its vertices wrote):\n')
    print('| archive | stage | wall (s) | Flink job (s) | outside the job (s) |'
          ' vertices | shuffled (MB) |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for name, results in rows:
      for _, i in flink:
        for stage in ('ImageExampleGen', 'StatisticsGen'):
          wall = results[i][stage]
          job_s, vertices, shuffled = results[i][stage + ' on Flink']
          print(f'| {name} | {stage} | {wall:.1f} | {job_s:.1f} | '
                f'{wall - job_s:.1f} | {vertices} | {shuffled:.0f} |')
  return 0


if __name__ == '__main__':
  sys.path.insert(0, PROJECT_ROOT)
  from pipeline import tempfiles  # pylint: disable=g-import-not-at-top
  with tempfiles.scratch_tempdir():  # TFX's sdist per executor (tempfiles.py)
    sys.exit(main())
