"""Two runs on one pipeline home (pipeline root + SQLite metadata store).

The second run is refused at once, with a clear message, before it touches
the store; the first finishes; the store stays intact and usable.
"""

import os
import sqlite3
import subprocess
import sys
import time

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
import pytest

from pipeline import configs
from pipeline import local_runner
from tests.conftest import PROJECT_ROOT

BUSY = 'another run is using this pipeline home'


def _settings(archive, home):
  return configs.Settings(
      data_root=archive, home=home, split_buckets={'train': 2, 'eval': 1,
                                                   'test': 1},
      require_every_class_in_every_split=False)


def test_a_held_home_refuses_a_run_at_once(tiny_archive, tmp_path):
  settings = _settings(tiny_archive, str(tmp_path / 'home'))
  with local_runner.home_lock(settings.metadata_path):
    start = time.time()
    with pytest.raises(local_runner.PipelineBusyError, match=BUSY) as error:
      local_runner.run(settings, ingest_only=True)
    assert time.time() - start < 5
    assert f'process {os.getpid()}' in str(error.value)
  assert not os.path.exists(settings.metadata_path)  # Nothing was written.
  # Released: the next run gets it.
  with local_runner.home_lock(settings.metadata_path):
    pass


@pytest.mark.e2e
def test_two_ingests_started_together_one_runs_one_is_refused(tiny_archive,
                                                              tmp_path):
  home = str(tmp_path / 'home')
  settings = _settings(tiny_archive, home)
  env = dict(os.environ)
  env.update(settings.to_env())
  env['PYTHONPATH'] = PROJECT_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  command = [sys.executable, '-m', 'pipeline.cli', 'ingest', '--data',
             tiny_archive, '--out', home]
  logs = [str(tmp_path / f'run{i}.log') for i in range(2)]
  processes = []
  for log in logs:
    with open(log, 'w') as f:
      processes.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                        stdout=f, stderr=subprocess.STDOUT))
  finished = {}
  while len(finished) < 2:
    for i, process in enumerate(processes):
      if i not in finished and process.poll() is not None:
        with open(logs[i]) as f:
          finished[i] = (time.time(), process.returncode, f.read())
    time.sleep(0.1)
  codes = sorted(code for _, code, _ in finished.values())
  assert codes == [0, 1], [out[-2000:] for _, _, out in finished.values()]
  (lost_at, _, lost_out), = [v for v in finished.values() if v[1] == 1]
  (won_at, _, _), = [v for v in finished.values() if v[1] == 0]
  assert BUSY in lost_out and '--home' in lost_out
  assert lost_at < won_at  # Refused while the other was still running.

  # One run in the store, which is intact and readable.
  with sqlite3.connect(f'file:{settings.metadata_path}?mode=ro',
                       uri=True) as db:
    assert db.execute('PRAGMA integrity_check').fetchone() == ('ok',)
    runs = db.execute(
        'SELECT COUNT(*) FROM Context c JOIN Type t ON c.type_id = t.id '
        "WHERE t.name = 'pipeline_run'").fetchone()[0]
  assert runs == 1
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = settings.metadata_path
  config.sqlite.connection_mode = 1  # READONLY
  executions = mlmd.MetadataStore(config).get_executions()
  assert executions and all(
      e.last_known_state == metadata_store_pb2.Execution.COMPLETE
      for e in executions)
