"""Crash and resume, reruns, the Trainer's cache: one pipeline home, for real.

In order, on one home and the tiny generated archive (1 epoch, 32 px):

1. ``skinlesion run`` in its own process group is SIGKILLed while its
   Trainer runs (seen in the ML Metadata store), leaving a RUNNING execution
   and half-written Trainer folders behind.
2. The same command again resumes: the finished components come from the
   cache, the Trainer runs anew into fresh folders, nothing of the killed
   execution is used, one complete version is pushed; the store is intact.
3. A rerun with unchanged data, code and config: every component comes from
   the cache, the Evaluator included (the candidate is not its own
   baseline), and no new version is pushed.
4. A changed model setting, then a changed file of models/, each re-run the
   Trainer (partial runs up to the Trainer: nothing downstream is needed).
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
import pytest
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from mobile_export import release
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import summary
from tests.conftest import cli_with_settings
from tests.conftest import PROJECT_ROOT
from tests.conftest import TINY_AUC_THRESHOLDS

pytestmark = pytest.mark.e2e

TRAINER_TYPE = 'tfx.components.trainer.component.Trainer'
RUNNING = metadata_store_pb2.Execution.RUNNING
INGESTION = ('ImageExampleGen', 'ImportSchemaGen', 'StatisticsGen',
             'ExampleValidator', 'DataReport')


def _settings(archive, home, **overrides):
  values = dict(data_root=archive, home=home, image_size=32, epochs=1,
                width=0.25, batch_size=16, min_balanced_accuracy=0.0,
                min_melanoma_recall=0.0, max_subgroup_gap=1.0,
                max_balanced_accuracy_drop=1.0, tflite_min_top1_agreement=0.0,
                tflite_max_balanced_accuracy_drop=1.0,
                split_buckets={'train': 2, 'eval': 1, 'test': 1},
                require_every_class_in_every_split=False,
                auc_thresholds=TINY_AUC_THRESHOLDS)
  values.update(overrides)
  return configs.Settings(**values)


def _env(settings):
  env = dict(os.environ)
  env.update(settings.to_env())
  env['PYTHONPATH'] = PROJECT_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _cli_run(settings):
  """`skinlesion run` in this process (its settings from SKINLESION_*)."""
  return cli_with_settings(settings, ['run', '--data', settings.data_root,
                                      '--home', settings.home])


def _running_trainers(metadata_path):
  """Ids of RUNNING Trainer executions, read-only (the writer is alive)."""
  if not os.path.exists(metadata_path):
    return []
  try:
    with sqlite3.connect(f'file:{metadata_path}?mode=ro', uri=True,
                         timeout=5) as db:
      return [row[0] for row in db.execute(
          'SELECT e.id FROM Execution e JOIN Type t ON e.type_id = t.id '
          'WHERE t.name = ? AND e.last_known_state = ?',
          (TRAINER_TYPE, RUNNING))]
  except sqlite3.OperationalError:  # Locked, or the schema not made yet.
    return []


def _store(settings):
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = settings.metadata_path
  config.sqlite.connection_mode = 1  # READONLY
  return mlmd.MetadataStore(config)


def _states(run):
  return {c.node_id: c.state for c in run.components}


def _versions(settings):
  return sorted(os.listdir(settings.serving_model_dir))


@pytest.fixture(scope='module')
def crashed(tiny_archive, tmp_path_factory):
  """Settings and the killed Trainer execution's id and folders."""
  home = str(tmp_path_factory.mktemp('crash_home'))
  settings = _settings(tiny_archive, home)
  log_path = os.path.join(home, 'killed_run.log')
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
        [sys.executable, '-m', 'pipeline.cli', 'run', '--data', tiny_archive,
         '--home', home], cwd=PROJECT_ROOT, env=_env(settings),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      deadline = time.time() + 300
      running = []
      while not running and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
        running = _running_trainers(settings.metadata_path)
      assert running, f'no Trainer ran (exit {process.poll()}); see {log_path}'
      # Let it write part of its outputs, then kill the whole group.
      run_dir = os.path.join(settings.pipeline_root, 'Trainer', 'model_run',
                             str(running[0]))
      until = time.time() + 10
      while time.time() < until and not (os.path.isdir(run_dir)
                                         and os.listdir(run_dir)):
        time.sleep(0.2)
      time.sleep(0.5)
    finally:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  assert process.returncode == -signal.SIGKILL, open(log_path).read()[-3000:]
  trainer = _store(settings).get_executions_by_id(running)[0]
  # Killed mid-training: the store still says RUNNING.
  assert trainer.last_known_state == RUNNING
  return settings, trainer.id


@pytest.fixture(scope='module')
def resumed(crashed):
  settings, killed_id = crashed
  assert not _versions_or_none(settings)
  assert _cli_run(settings) == 0
  return settings, killed_id, summary.latest_run(settings)


def _versions_or_none(settings):
  if not os.path.isdir(settings.serving_model_dir):
    return []
  return _versions(settings)


def test_resume_reuses_what_finished_and_reruns_the_trainer(resumed):
  _, _, run = resumed
  states = _states(run)
  for node in INGESTION:
    assert states[node] == 'CACHED', states
  for node in ('Trainer', 'Evaluator', 'MobileExporter', 'MobilePusher'):
    assert states[node] == 'COMPLETE', states
  assert run.blessed is True
  assert not run.has_baseline  # The killed run blessed nothing.


def test_no_artifact_of_the_killed_trainer_is_used(resumed):
  settings, killed_id, _ = resumed
  store = _store(settings)
  killed_prefix = os.path.join(settings.pipeline_root, 'Trainer')
  killed_uris = {os.path.join(killed_prefix, key, str(killed_id))
                 for key in ('model', 'model_run')}
  # The killed execution published no output artifact ...
  outputs = [e for e in store.get_events_by_execution_ids([killed_id])
             if e.type == metadata_store_pb2.Event.OUTPUT]
  assert not outputs
  # ... and no execution read anything from its folders.
  events = store.get_events_by_execution_ids(
      [e.id for e in store.get_executions()])
  inputs = store.get_artifacts_by_id(
      sorted({e.artifact_id for e in events
              if e.type == metadata_store_pb2.Event.INPUT}))
  for artifact in inputs:
    assert not any(artifact.uri.startswith(uri) for uri in killed_uris), (
        artifact.uri)
  # The pushed model is the resumed Trainer's (another execution's folder).
  version = _versions(settings)[0]
  manifest = release.read_json(os.path.join(
      settings.serving_model_dir, version, release.MANIFEST_FILE))
  assert manifest['lineage']['model_uri'] not in killed_uris
  assert os.path.isdir(manifest['lineage']['model_uri'])


def test_one_complete_version_is_pushed_and_the_store_is_intact(resumed):
  settings, _, run = resumed
  versions = _versions(settings)
  assert len(versions) == 1 and versions[0].isdigit(), versions  # No staging.
  destination = os.path.join(settings.serving_model_dir, versions[0])
  assert run.pushed_model == destination
  manifest = release.read_json(os.path.join(destination,
                                            release.MANIFEST_FILE))
  assert manifest['files'] == release.file_inventory(destination)
  with sqlite3.connect(f'file:{settings.metadata_path}?mode=ro',
                       uri=True) as db:
    assert db.execute('PRAGMA integrity_check').fetchone() == ('ok',)


def test_rerun_with_nothing_changed_pushes_no_new_version(resumed):
  settings, _, _ = resumed
  before = _versions(settings)
  assert _cli_run(settings) == 0
  run = summary.latest_run(settings)
  states = _states(run)
  for node in INGESTION + ('Trainer', 'Evaluator', 'MobileExporter',
                           'MobilePusher'):
    assert states[node] == 'CACHED', states
  assert _versions(settings) == before
  assert 'this run pushed nothing' in run.format()


def _trainer_state_after_partial_run(settings):
  tfx.orchestration.LocalDagRunner().run(
      pipeline_lib.create_pipeline(settings),
      run_options=tfx_pipeline.RunOptions(to_nodes=['Trainer']))
  return _states(summary.latest_run(settings))['Trainer']


def test_a_changed_model_setting_invalidates_the_trainers_cache(resumed):
  settings, _, _ = resumed
  assert _trainer_state_after_partial_run(settings) == 'CACHED'
  changed = _settings(settings.data_root, settings.home, epochs=2)
  assert changed.trainer_config() != settings.trainer_config()
  assert _trainer_state_after_partial_run(changed) == 'COMPLETE'


def test_a_changed_models_file_invalidates_the_trainers_cache(
    resumed, tmp_path, monkeypatch):
  settings, _, _ = resumed
  # A copy of models/ (TFX packages the module file's folder): identical,
  # it hits the cache; one edited file misses it.
  models = tmp_path / 'models'
  shutil.copytree(os.path.join(PROJECT_ROOT, 'models'), models,
                  ignore=shutil.ignore_patterns('__pycache__'))
  monkeypatch.setattr(pipeline_lib, 'TRAINER_MODULE_FILE',
                      str(models / 'trainer.py'))
  assert _trainer_state_after_partial_run(settings) == 'CACHED'
  with open(models / 'cnn_baseline.py', 'a') as f:
    f.write('\n# An edit.\n')
  assert _trainer_state_after_partial_run(settings) == 'COMPLETE'
