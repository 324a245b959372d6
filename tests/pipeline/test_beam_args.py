"""Beam arguments for the data components: DirectRunner, Dataflow, Flink, Spark.

Each builder's flags are parsed by Beam's own PipelineOptions (a misspelt or
unknown flag is not an option there), resolved the way the runners resolve
them (runner class, SDK harness environment), and passed through TFX's
dependency logic, which must not need to build and stage its own package.
Nothing is submitted: that needs the clusters (README, "Running at scale").
"""

import pytest

from apache_beam.options import pipeline_options as po
from apache_beam.runners import runner as beam_runner
from apache_beam.runners.portability import portable_runner
from apache_beam.transforms import environments
from tfx.utils import dependency_utils

from pipeline import cli
from pipeline import beam_args
from pipeline import configs

IMAGE = 'europe-west4-docker.pkg.dev/proj/repo/skin-lesion-tfx:3f9c2e1'


def _options(args):
  """Beam's parse of args; every flag must be one Beam knows."""
  options = po.PipelineOptions(args)
  known = options.get_all_options()  # Known options only.
  for arg in args:
    name = arg[2:].split('=', 1)[0]
    assert name in known, f'Beam does not know {arg}'
  return options


def test_direct_runner_in_process_or_multi_processing():
  assert beam_args.direct_beam_args(1) == configs.BEAM_PIPELINE_ARGS
  direct = _options(beam_args.direct_beam_args(4)).view_as(po.DirectOptions)
  assert (direct.direct_running_mode, direct.direct_num_workers) == (
      'multi_processing', 4)
  # 0: Beam starts one worker per CPU core.
  assert _options(beam_args.direct_beam_args(0)).view_as(
      po.DirectOptions).direct_num_workers == 0
  with pytest.raises(ValueError):
    beam_args.direct_beam_args(-1)


def test_cli_beam_workers_flag_sets_the_direct_runner_args(tmp_path):
  args = cli.build_parser().parse_args(
      ['run', '--data', str(tmp_path), '--beam-workers', '3'])
  assert cli._settings_from(args).beam_pipeline_args == [  # pylint: disable=protected-access
      '--direct_running_mode=multi_processing', '--direct_num_workers=3']
  default = cli.build_parser().parse_args(['run', '--data', str(tmp_path)])
  assert cli._settings_from(default).beam_pipeline_args == (  # pylint: disable=protected-access
      configs.BEAM_PIPELINE_ARGS)


def test_dataflow_args():
  args = beam_args.dataflow_beam_args(
      project='proj', region='europe-west4',
      temp_location='gs://bucket/tmp', sdk_container_image=IMAGE,
      max_num_workers=20, machine_type='n2-standard-8')
  options = _options(args)
  gcp = options.view_as(po.GoogleCloudOptions)
  assert (gcp.project, gcp.region, gcp.temp_location) == (
      'proj', 'europe-west4', 'gs://bucket/tmp')
  assert options.view_as(po.StandardOptions).runner == 'DataflowRunner'
  assert options.view_as(po.SetupOptions).setup_file == './setup.py'
  workers = options.view_as(po.WorkerOptions)
  assert (workers.sdk_container_image, workers.max_num_workers,
          workers.machine_type) == (IMAGE, 20, 'n2-standard-8')
  # The project's own setup.py ships the code: TFX adds no package of its own.
  assert dependency_utils.make_beam_dependency_flags(args) == args
  with pytest.raises(ValueError, match='gs://'):
    beam_args.dataflow_beam_args('proj', 'europe-west4', '/tmp/local')


@pytest.mark.parametrize('builder,runner,master', [
    (lambda **kw: beam_args.flink_beam_args('flink-jobmanager:8081', **kw),
     'FlinkRunner', ('flink_master', 'flink-jobmanager:8081')),
    (lambda **kw: beam_args.spark_beam_args('spark://spark-master:7077', **kw),
     'SparkRunner', ('spark_master_url', 'spark://spark-master:7077')),
    (lambda **kw: beam_args.portable_beam_args('beam-job-server:8099', **kw),
     'PortableRunner', ('job_endpoint', 'beam-job-server:8099')),
])
def test_portable_runner_args(builder, runner, master):
  args = builder(environment_type='DOCKER', environment_config=IMAGE)
  options = _options(args)
  assert options.view_as(po.StandardOptions).runner == runner
  assert options.get_all_options()[master[0]] == master[1]
  # Flink and Spark runners are portable runners (Job API + SDK harness).
  assert isinstance(beam_runner.create_runner(runner),
                    portable_runner.PortableRunner)
  # Workers start the pipeline image as their Python SDK harness ...
  env = environments.Environment.from_options(
      options.view_as(po.PortableOptions))
  assert isinstance(env, environments.DockerEnvironment)
  assert env.container_image == IMAGE
  # ... which has everything installed: TFX stages nothing more.
  assert dependency_utils.make_beam_dependency_flags(args) == args
  # A worker-pool sidecar instead of Docker-in-Docker.
  external = _options(builder(environment_type='EXTERNAL',
                              environment_config='localhost:50000'))
  env = environments.Environment.from_options(
      external.view_as(po.PortableOptions))
  assert isinstance(env, environments.ExternalEnvironment)
  assert env.url == 'localhost:50000'
  with pytest.raises(ValueError, match='environment_config'):
    builder(environment_type='DOCKER', environment_config='')


def test_flink_and_spark_specific_flags():
  flink = _options(beam_args.flink_beam_args(
      'jm:8081', environment_type='LOOPBACK', parallelism=8,
      flink_version='1.18', job_server_jar='/jars/flink-job-server.jar'))
  options = flink.view_as(po.FlinkRunnerOptions)
  assert (options.parallelism, options.flink_version,
          options.flink_job_server_jar) == (8, '1.18',
                                            '/jars/flink-job-server.jar')
  assert flink.view_as(po.PortableOptions).environment_type == 'LOOPBACK'
  spark = _options(beam_args.spark_beam_args(
      'spark://m:7077', environment_type='LOOPBACK',
      job_server_jar='/jars/spark-job-server.jar'))
  assert spark.view_as(po.SparkRunnerOptions).spark_version == '3'
  assert spark.view_as(po.SparkRunnerOptions).spark_job_server_jar == (
      '/jars/spark-job-server.jar')
  with pytest.raises(ValueError, match='environment_type'):
    beam_args.flink_beam_args('jm:8081', environment_type='KUBERNETES')


def test_local_flink_args_loopback_parallelism_2_and_the_local_job_server():
  args = beam_args.local_flink_beam_args()
  options = _options(args)
  flink = options.view_as(po.FlinkRunnerOptions)
  assert options.view_as(po.StandardOptions).runner == 'FlinkRunner'
  assert (flink.flink_master, flink.flink_version, flink.parallelism,
          flink.flink_job_server_jar) == (
              beam_args.FLINK_MASTER, '1.19', 2, beam_args.FLINK_JOB_SERVER_JAR)
  # No Docker engine: this process is the SDK harness.
  assert options.view_as(po.PortableOptions).environment_type == 'LOOPBACK'
  assert beam_args.flink_master_of(args) == beam_args.FLINK_MASTER
  assert beam_args.flink_master_of(beam_args.direct_beam_args()) is None
  assert beam_args.flink_master_of(
      beam_args.local_flink_beam_args('jm:9081')) == 'jm:9081'


@pytest.mark.parametrize('spec,master', [
    ('flink', beam_args.FLINK_MASTER), ('flink=jm.example:18081',
                                      'jm.example:18081')])
def test_cli_beam_flag_runs_the_data_stages_on_flink(tmp_path, spec, master):
  for command in (['run', '--data', str(tmp_path)],
                  ['ingest', '--data', str(tmp_path), '--out', str(tmp_path)]):
    parsed = cli.build_parser().parse_args(command + ['--beam', spec])
    if command[0] == 'ingest':
      parsed.home = parsed.out
    settings = cli._settings_from(parsed)  # pylint: disable=protected-access
    assert settings.beam_pipeline_args == beam_args.local_flink_beam_args(master)
    # The TFX CLI path: the same arguments through the environment.
    assert configs.Settings.from_env(
        settings.to_env()).beam_pipeline_args == settings.beam_pipeline_args


def test_cli_beam_flag_refuses_what_it_cannot_run(tmp_path):
  for bad in (['--beam', 'spark'], ['--beam', 'flink=nohostport'],
              ['--beam', 'flink', '--beam-workers', '2']):
    parsed = cli.build_parser().parse_args(['run', '--data', str(tmp_path)]
                                           + bad)
    with pytest.raises(SystemExit, match='--beam'):
      cli._settings_from(parsed)  # pylint: disable=protected-access
  direct = cli.build_parser().parse_args(['run', '--data', str(tmp_path),
                                          '--beam', 'direct'])
  assert cli._settings_from(direct).beam_pipeline_args == (  # pylint: disable=protected-access
      configs.BEAM_PIPELINE_ARGS)
