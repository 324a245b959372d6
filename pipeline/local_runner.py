"""Runs the pipeline locally: LocalDagRunner, SQLite MLMD, Beam in-process.

As a script (what the TFX CLI does) it reads its settings from the
environment (``SKINLESION_DATA_ROOT``, ``SKINLESION_LAYOUT``,
``SKINLESION_HOME``, ... see ``configs.Settings``):

  python pipeline/local_runner.py
  tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
  tfx run create --engine local --pipeline_name skin-lesion-tfx

``skinlesion run`` calls ``run()`` with the same settings object.
"""

import contextlib
import errno
import fcntl
import os
import sys
import urllib.error
import urllib.request

if __package__ in (None, ''):
  # Run as a file: this folder (which holds pipeline.py) must not shadow the
  # `pipeline` package; the project root must be importable.
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _here]
  sys.path.insert(0, os.path.dirname(_here))

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx

from pipeline import beam_args
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import tempfiles


class PipelineBusyError(RuntimeError):
  """Another run holds the pipeline home (its metadata store)."""


LOCK_SUFFIX = '.lock'


@contextlib.contextmanager
def home_lock(metadata_path: str):
  """Holds ``<metadata_path>.lock`` for one run, or fails at once.

  Two LocalDagRunner runs on one pipeline root and SQLite store would both
  write the store and the same component folders; the second run is refused
  instead, before it touches anything.  The lock is an advisory ``flock``:
  the kernel releases it when the holder exits, however it exits (even on
  SIGKILL), so a crashed run never leaves a stale lock behind.
  """
  directory = os.path.dirname(metadata_path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  path = metadata_path + LOCK_SUFFIX
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      with open(path, encoding='utf-8', errors='replace') as f:
        holder = f.read().strip() or 'another process'
      raise PipelineBusyError(
          f'another run is using this pipeline home ({holder} holds '
          f'{path}); wait for it to finish, or use another --home') from None
    os.ftruncate(fd, 0)
    os.write(fd, f'process {os.getpid()}\n'.encode())
    yield
  finally:
    os.close(fd)  # Releases the lock.


class FlinkUnavailableError(RuntimeError):
  """The Beam arguments name a Flink cluster that cannot run the job."""


def check_flink(pipeline_args, timeout: float = 5.0) -> None:
  """Fails in seconds, naming the master, when FlinkRunner arguments point at
  a Flink cluster whose REST API does not answer (Beam itself would retry the
  submission for minutes), or at a job-server jar that is not there."""
  master = beam_args.flink_master_of(list(pipeline_args))
  if master is None:
    return
  if master not in ('[auto]', '[local]'):  # Not embedded in the job server.
    url = (master if '://' in master else 'http://' + master).rstrip('/')
    try:
      with urllib.request.urlopen(url + '/v1/config', timeout=timeout):
        pass
    except (urllib.error.URLError, OSError) as e:
      reason = getattr(e, 'reason', e)
      raise FlinkUnavailableError(
          f'the Flink master {master} does not answer ({reason}): start the '
          'local cluster (tools/flink_cluster.sh start) or name a running '
          'one (--beam flink=HOST:PORT)') from None
  jars = [a.split('=', 1)[1] for a in pipeline_args
          if a.startswith('--flink_job_server_jar=')]
  if jars and not os.path.exists(jars[-1]):
    raise FlinkUnavailableError(
        f"Beam's Flink job server {jars[-1]} is missing: run 'make flink'")


def run(settings: configs.Settings, ingest_only: bool = False) -> None:
  """Runs the whole pipeline synchronously; raises if a component fails.

  TFX hands the process's command line to every executor (as absl flags and
  as extra Beam arguments).  The settings are already parsed, so the caller's
  arguments (``skinlesion run --data ...``, or pytest's ``-v``, which absl
  reads as ``--verbosity``) are hidden from the components while they run.
  The run's temporary files are deleted when it ends
  (tempfiles.scratch_tempdir).
  """
  pipeline_lib.resolve_auto_labels(settings)
  settings.validate()
  check_flink(settings.beam_pipeline_args)
  argv = sys.argv
  sys.argv = argv[:1]
  try:
    with home_lock(settings.metadata_path), tempfiles.scratch_tempdir():
      tfx.orchestration.LocalDagRunner().run(
          pipeline_lib.create_pipeline(settings, ingest_only=ingest_only))
  finally:
    sys.argv = argv


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  run(configs.Settings.from_env())
