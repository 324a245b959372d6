"""Kubeflow / Vertex: the pipeline compiled offline, and the compiled files.

The pipeline is compiled with KubeflowV2DagRunner (directly and through the
TFX CLI, in-process) for a gs:// home; nothing needs a cluster or a cloud
account, and a compile step that touched the bucket would fail here.  The
compiled JSON is then checked field by field, and loaded by the two clients
that submit it: the Vertex AI SDK (JSON) and the KFP v2 SDK (YAML).
"""

import json
import os
import sys

from absl import logging
from click import testing as click_testing
import pytest
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
from tfx.utils import import_utils

from components import data_report
from components import mobile_exporter
from components import run_report
from pipeline import beam_args
from pipeline import configs
from pipeline import kubeflow_runner
from tests.conftest import PROJECT_ROOT

IMAGE = 'europe-west4-docker.pkg.dev/proj/repo/skin-lesion-tfx:3f9c2e1'
HOME = 'gs://skin-bucket/tfx'
DATA = 'gs://skin-bucket/ham10000'
PIPELINE_ROOT = 'gs://skin-bucket/tfx/pipelines/skin-lesion-tfx'
DATAFLOW_ARGS = beam_args.dataflow_beam_args(
    project='proj', region='europe-west4',
    temp_location='gs://skin-bucket/dataflow-tmp',
    setup_file=configs.PROJECT_DIR_IN_IMAGE + '/setup.py',
    sdk_container_image=IMAGE)
ENV = {
    'SKINLESION_PIPELINE_IMAGE': IMAGE,
    'SKINLESION_HOME': HOME,
    'SKINLESION_DATA_ROOT': DATA,
    'SKINLESION_BEAM_PIPELINE_ARGS': ' '.join(DATAFLOW_ARGS),
    'SKINLESION_TRAINER_CPU_LIMIT': '8',
    'SKINLESION_TRAINER_MEMORY_LIMIT': '32',
    'SKINLESION_TRAINER_ACCELERATOR_TYPE': 'NVIDIA_TESLA_T4',
    'SKINLESION_TRAINER_ACCELERATOR_COUNT': '1',
}
COMPONENTS = {'ImageExampleGen', 'ImportSchemaGen', 'StatisticsGen',
              'ExampleValidator', 'AnomaliesGate', 'DataReport', 'Trainer',
              'Evaluator', 'IntervalGate', 'MobileExporter',
              'MobilePusher', 'RunReporter'}
# The components whose executors run Beam pipelines.
BEAM_COMPONENTS = ('ImageExampleGen', 'StatisticsGen', 'Evaluator')


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  """(path, the compiled PipelineJob as JSON text and as a dict)."""
  path = str(tmp_path_factory.mktemp('kfp') / 'pipeline.json')
  kubeflow_runner.compile_pipeline(configs.Settings.from_env(ENV), path)
  with open(path) as f:
    text = f.read()
  return path, text, json.loads(text)


def _tasks(job):
  return job['pipelineSpec']['root']['dag']['tasks']


def _container(job, task):
  label = job['pipelineSpec']['components'][task]['executorLabel']
  return job['pipelineSpec']['deploymentSpec']['executors'][label]['container']


def _parameters(job, task):
  """A task's constant parameters (schema 2.0.0: {'stringValue': ...})."""
  params = {}
  for name, value in _tasks(job)[task]['inputs'].get('parameters', {}).items():
    (params[name],) = value['runtimeValue']['constantValue'].values()
  return params


def _upstream(job, task):
  """Every task that runs before `task` (transitive dependentTasks)."""
  seen, todo = set(), [task]
  while todo:
    for parent in _tasks(job)[todo.pop()].get('dependentTasks', []):
      if parent not in seen:
        seen.add(parent)
        todo.append(parent)
  return seen


def test_every_component_is_compiled(compiled):
  _, _, job = compiled
  tasks = set(_tasks(job))
  assert COMPONENTS <= tasks
  # The latest-blessed-model resolver becomes two Vertex resolver tasks, the
  # drift-baseline resolver one.
  assert sorted(tasks - COMPONENTS) == [
      'latest_blessed_model_resolver-model-blessing-resolver',
      'latest_blessed_model_resolver-model-resolver',
      'previous_validated_statistics']
  assert job['displayName'] == 'skin-lesion-tfx'


def test_dag_edges(compiled):
  _, _, job = compiled
  deps = {t: set(_tasks(job)[t].get('dependentTasks', [])) for t in COMPONENTS}
  # Training waits for the anomalies gate, hence for data validation.
  assert 'AnomaliesGate' in deps['Trainer']
  assert {'ExampleValidator', 'StatisticsGen', 'ImportSchemaGen'} <= \
      deps['AnomaliesGate']
  assert {'ExampleValidator', 'ImportSchemaGen', 'StatisticsGen',
          'ImageExampleGen'} <= _upstream(job, 'Trainer')
  assert 'Trainer' in deps['Evaluator']
  assert 'Evaluator' in deps['MobileExporter']
  assert {'Evaluator', 'IntervalGate', 'MobileExporter'} <= deps[
      'MobilePusher']
  assert 'Trainer' in deps['IntervalGate']
  assert {'Evaluator', 'MobilePusher', 'DataReport', 'IntervalGate'} <= deps[
      'RunReporter']
  assert not deps['ImageExampleGen']
  # The baseline for the Evaluator comes from the resolver.
  assert (_tasks(job)['Evaluator']['inputs']['artifacts']['baseline_model']
          ['taskOutputArtifact']['producerTask']
          == 'latest_blessed_model_resolver-model-resolver')


def test_every_component_runs_the_pipeline_image(compiled):
  _, _, job = compiled
  for task in COMPONENTS:
    container = _container(job, task)
    assert container['image'] == IMAGE, task
    assert container['command'] == list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)


def test_pipeline_root_and_data_locations(compiled):
  _, _, job = compiled
  assert job['runtimeConfig']['gcsOutputDirectory'] == PIPELINE_ROOT
  assert _parameters(job, 'ImageExampleGen')['input_base'] == DATA
  # The curated schema is the copy installed in the image.
  assert _parameters(job, 'ImportSchemaGen')['schema_file'] == (
      configs.PROJECT_DIR_IN_IMAGE + '/pipeline/schema/schema.pbtxt')
  assert _parameters(job, 'MobilePusher')['base_directory'] == (
      HOME + '/serving_model/skin-lesion-tfx')


def test_beam_args_reach_the_data_components(compiled):
  _, _, job = compiled
  for task in BEAM_COMPONENTS:
    args = _container(job, task)['args']
    start = args.index(DATAFLOW_ARGS[0])
    assert args[start:start + len(DATAFLOW_ARGS)] == DATAFLOW_ARGS, task
  assert '--setup_file=/pipeline/setup.py' in DATAFLOW_ARGS


def test_trainer_runs_the_installed_code_on_the_requested_machine(compiled):
  _, _, job = compiled
  params = _parameters(job, 'Trainer')
  assert params['run_fn'] == configs.INSTALLED_TRAINER_RUN_FN
  assert not params.get('module_file') and not params.get('module_path')
  assert json.loads(params['custom_config'])['model'] == 'cnn_baseline'
  assert _container(job, 'Trainer')['resources'] == {
      'cpuLimit': 8.0, 'memoryLimit': 32.0,
      'accelerator': {'type': 'NVIDIA_TESLA_T4', 'count': '1'}}
  assert 'resources' not in _container(job, 'Evaluator')


def test_no_path_of_the_compiling_machine_is_compiled_in(compiled):
  _, text, _ = compiled
  assert PROJECT_ROOT not in text
  assert os.path.expanduser('~') + '/' not in text


def test_custom_artifact_type_resolves_in_the_container(compiled):
  _, _, job = compiled
  for task, key, cls in (
      ('MobileExporter', 'mobile_models', mobile_exporter.MobileModels),
      ('DataReport', 'charts', data_report.DataCharts),
      ('RunReporter', 'report', run_report.RunReport)):
    schema = (job['pipelineSpec']['components'][task]['outputDefinitions']
              ['artifacts'][key]['artifactType']['instanceSchema'])
    title = schema.split('\n')[0]
    assert title == f'title: components.{cls.__name__}'
    # What TFX's container entrypoint does with the title.
    assert import_utils.import_class_by_path(
        f'components.{cls.__name__}') is cls


def test_vertex_sdk_accepts_the_json(compiled):
  from google.auth import credentials  # pylint: disable=g-import-not-at-top
  from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  path, _, _ = compiled
  # Building the job reads and validates the template; nothing is sent.
  job = aiplatform.PipelineJob(
      display_name='skin-lesion-tfx', template_path=path, project='proj',
      location='europe-west4',
      credentials=credentials.AnonymousCredentials())
  spec = job.to_dict()
  assert spec['runtimeConfig']['gcsOutputDirectory'] == PIPELINE_ROOT
  assert COMPONENTS <= set(spec['pipelineSpec']['root']['dag']['tasks'])


def test_kfp_sdk_loads_the_yaml(tmp_path):
  from kfp import components  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'pipeline.yaml')
  kubeflow_runner.compile_pipeline(configs.Settings.from_env(ENV), path)
  pipeline = components.load_component_from_file(path)
  assert pipeline.pipeline_spec.schema_version == '2.1.0'
  assert COMPONENTS <= set(pipeline.pipeline_spec.root.dag.tasks)


@pytest.mark.parametrize('override,message', [
    ({'SKINLESION_PIPELINE_IMAGE': ''}, 'SKINLESION_PIPELINE_IMAGE'),
    ({'SKINLESION_HOME': '/tmp/home'}, 'home must be a gs:// or s3:// URI'),
    ({'SKINLESION_DATA_ROOT': '/data'}, 'SKINLESION_DATA_ROOT'),
    ({'SKINLESION_TRAINER_ACCELERATOR_COUNT': '0'},
     'trainer_accelerator_type and trainer_accelerator_count'),
    ({'SKINLESION_LAYOUT': 'zip'}, 'layout must be one of'),
])
def test_settings_that_cannot_work_on_a_cluster_are_refused(override,
                                                            message):
  settings = configs.Settings.from_env({**ENV, **override})
  with pytest.raises(ValueError, match=message):
    kubeflow_runner.kubeflow_settings(settings)


def test_s3_is_accepted_with_a_warning(caplog):
  settings = configs.Settings.from_env(
      {**ENV, 'SKINLESION_HOME': 's3://skin-bucket/tfx'})
  settings = kubeflow_runner.kubeflow_settings(settings)
  assert settings.pipeline_root == (
      's3://skin-bucket/tfx/pipelines/skin-lesion-tfx')
  assert "TensorFlow's S3 file system" in caplog.text


def test_tfx_cli_compiles_the_runner_file(tmp_path, monkeypatch):
  from tfx.tools.cli import cli_main  # pylint: disable=g-import-not-at-top
  output = str(tmp_path / 'cli.json')
  for key, value in ENV.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv(kubeflow_runner.OUTPUT_ENV, output)
  # The CLI looks for kfp in `pip freeze` of the pip on PATH.
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep
                     + os.environ['PATH'])
  verbosity = logging.get_verbosity()
  try:
    result = click_testing.CliRunner().invoke(cli_main.cli_group, [
        'pipeline', 'compile', '--engine', 'vertex', '--pipeline_path',
        os.path.join(PROJECT_ROOT, 'pipeline', 'kubeflow_runner.py')])
  finally:
    logging.set_verbosity(verbosity)
  assert result.exit_code == 0, result.output
  assert 'Pipeline skin-lesion-tfx compiled successfully.' in result.output
  with open(output) as f:
    job = json.load(f)
  assert job['runtimeConfig']['gcsOutputDirectory'] == PIPELINE_ROOT
  assert COMPONENTS <= set(_tasks(job))


def test_tuner_compiles_and_feeds_the_trainer(tmp_path):
  path = str(tmp_path / 'pipeline.json')
  kubeflow_runner.compile_pipeline(
      configs.Settings.from_env({**ENV, 'SKINLESION_TUNER_TRIALS': '2'}), path)
  with open(path) as f:
    job = json.load(f)
  tasks = _tasks(job)
  assert 'Tuner' in tasks
  assert 'Tuner' in tasks['Trainer'].get('dependentTasks', [])
