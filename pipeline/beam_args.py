"""``beam_pipeline_args`` for each Beam runner the data components run on.

DirectRunner, Dataflow, Flink (a cluster, or the local one tests and
benchmarks start), Spark and any portable job service; docs/scale.md shows
them in use.  The settings themselves are in pipeline/configs.py.
"""

import os
from typing import List, Optional

from pipeline.configs import BEAM_PIPELINE_ARGS
from pipeline.configs import PROJECT_DIR_IN_IMAGE
from pipeline.configs import PROJECT_ROOT

# Beam runners for the components that run Beam (ImageExampleGen,
# StatisticsGen, Evaluator: each receives the pipeline's
# beam_pipeline_args).  Each function returns the whole argument
# list; set it as Settings.beam_pipeline_args (or, space-separated, as
# SKINLESION_BEAM_PIPELINE_ARGS).
#
# TFX ships its own source to Beam workers as a freshly built sdist unless
# the arguments already name the code (--setup_file, --extra_package,
# --sdk_container_image, ...); dataflow_beam_args and the DOCKER
# environments below name it.


def direct_beam_args(workers: int = 1) -> List[str]:
  """DirectRunner on this machine.

  Args:
    workers: 1 runs Beam in-process (the default, fastest for small
      archives); N > 1 starts N worker processes (``multi_processing``), which
      pays for itself only on large archives (BENCHMARKS.md); 0 starts one
      per CPU core.
  """
  if workers < 0:
    raise ValueError(f'workers must be >= 0, got {workers}')
  if workers == 1:
    return list(BEAM_PIPELINE_ARGS)
  return ['--direct_running_mode=multi_processing',
          f'--direct_num_workers={workers}']


def dataflow_beam_args(project: str, region: str, temp_location: str,
                       setup_file: str = './setup.py',
                       sdk_container_image: str = '',
                       max_num_workers: int = 0,
                       machine_type: str = '') -> List[str]:
  """Google Cloud Dataflow.

  Args:
    project: the Google Cloud project that runs the jobs.
    region: the Dataflow region, e.g. ``europe-west4``.
    temp_location: a ``gs://`` folder for Dataflow's temporary and staged
      files.
    setup_file: this project's setup.py: Beam builds an sdist of the project
      (pipeline/, components/, models/, mobile_export/) and the workers
      pip-install it with its pinned dependencies, so they run the launcher's
      code.  A relative path is resolved against the launching process's
      working directory: the project root locally, PROJECT_DIR_IN_IMAGE
      (the Dockerfile's WORKDIR) when a Kubeflow / Vertex component launches
      the job.
    sdk_container_image: optional: the pipeline image (Dockerfile), so the
      workers start with every dependency installed instead of installing
      them at start-up.
    max_num_workers: optional autoscaling limit.
    machine_type: optional worker machine type, e.g. ``n2-standard-8``.
  """
  if not temp_location.startswith('gs://'):
    raise ValueError(f'Dataflow needs a gs:// temp_location: {temp_location!r}')
  args = ['--runner=DataflowRunner', f'--project={project}',
          f'--region={region}', f'--temp_location={temp_location}',
          f'--setup_file={setup_file}']
  if sdk_container_image:
    args.append(f'--sdk_container_image={sdk_container_image}')
  if max_num_workers:
    args.append(f'--max_num_workers={max_num_workers}')
  if machine_type:
    args.append(f'--machine_type={machine_type}')
  return args


def _portable_environment_args(environment_type: str,
                               environment_config: str) -> List[str]:
  """SDK-harness flags shared by Flink, Spark and plain portable job servers.

  DOCKER: each worker starts ``environment_config`` (the pipeline image,
  whose entrypoint is Beam's SDK harness boot) as its Python SDK harness; the
  same image is passed as --sdk_container_image so TFX does not stage a
  second copy of itself.  EXTERNAL: ``environment_config`` is the address of
  a worker pool already running beside each worker (``/opt/apache/beam/boot
  --worker_pool`` in the pipeline image).  LOOPBACK: the launching process
  is the SDK harness (one machine only; what the tests use).
  """
  if environment_type not in ('DOCKER', 'EXTERNAL', 'PROCESS', 'LOOPBACK'):
    raise ValueError(f'unknown Beam environment_type {environment_type!r}')
  if environment_type == 'LOOPBACK':
    return ['--environment_type=LOOPBACK']
  if not environment_config:
    raise ValueError(f'environment_type {environment_type} needs an '
                     'environment_config (image, address or command)')
  args = [f'--environment_type={environment_type}',
          f'--environment_config={environment_config}']
  if environment_type == 'DOCKER':
    args.append(f'--sdk_container_image={environment_config}')
  return args


def portable_beam_args(job_endpoint: str, environment_type: str = 'DOCKER',
                       environment_config: str = '') -> List[str]:
  """Any Beam job service (a Flink or Spark job server already running, or
  Beam's Python job server) reached through the portable Job API at
  ``job_endpoint`` (host:port)."""
  return (['--runner=PortableRunner', f'--job_endpoint={job_endpoint}']
          + _portable_environment_args(environment_type, environment_config))


def flink_beam_args(flink_master: str, environment_type: str = 'DOCKER',
                    environment_config: str = '', parallelism: int = 0,
                    flink_version: str = '1.19',
                    job_server_jar: str = '') -> List[str]:
  """An Apache Flink cluster (``flink_master``: host:port of its REST API).

  ``flink_version`` must be the cluster's (Beam 2.61 publishes job servers
  for Flink 1.17, 1.18 and 1.19).

  FlinkRunner starts Beam's Flink job server from a jar that it downloads
  from Maven Central unless ``job_server_jar`` names a local copy; where the
  launcher has no Internet access, run the job server beside Flink
  (``apache/beam_flink<version>_job_server`` image) and use
  portable_beam_args instead.
  """
  args = ['--runner=FlinkRunner', f'--flink_master={flink_master}',
          f'--flink_version={flink_version}']
  if parallelism:
    args.append(f'--parallelism={parallelism}')
  if job_server_jar:
    args.append(f'--flink_job_server_jar={job_server_jar}')
  return args + _portable_environment_args(environment_type,
                                           environment_config)


# The local Flink cluster of tools/flink_cluster.sh (`make flink` installs
# it): its REST address and Beam's Flink job server, assembled from Maven
# Central by tools/flink_install.sh.
FLINK_MASTER = 'localhost:8081'
FLINK_JOB_SERVER_JAR = os.path.join(PROJECT_ROOT, 'build', 'flink',
                                    'beam-flink-1.19-job-server.jar')
FLINK_PARALLELISM = 2  # One slot on each of its two TaskManagers.


def local_flink_beam_args(flink_master: str = '',
                          parallelism: int = FLINK_PARALLELISM) -> List[str]:
  """The Flink cluster of tools/flink_cluster.sh (or another one at
  ``flink_master``, host:port of its REST API), reached from this machine.

  LOOPBACK: this process is the SDK harness that Flink's TaskManagers call
  for the Python transforms (no Docker engine needed, and no copy of the
  code to ship); the job server is the local jar.
  """
  return flink_beam_args(flink_master or FLINK_MASTER,
                         environment_type='LOOPBACK', parallelism=parallelism,
                         job_server_jar=FLINK_JOB_SERVER_JAR)


def beam_args_for(spec: str) -> List[str]:
  """``--beam`` of the CLI: ``direct`` or ``flink[=HOST:PORT]``."""
  name, _, address = spec.partition('=')
  if name == 'direct' and not address:
    return direct_beam_args()
  if name == 'flink':
    if address and (':' not in address or
                    not address.rsplit(':', 1)[1].isdigit()):
      raise ValueError(f'--beam flink=HOST:PORT, got {spec!r}')
    return local_flink_beam_args(address)
  raise ValueError(f'--beam: direct or flink[=HOST:PORT], got {spec!r}')


def flink_master_of(beam_args: List[str]) -> Optional[str]:
  """The --flink_master of FlinkRunner arguments (None for other runners)."""
  if '--runner=FlinkRunner' not in beam_args:
    return None
  masters = [a.split('=', 1)[1] for a in beam_args
             if a.startswith('--flink_master=')]
  return masters[-1] if masters else '[auto]'


def spark_beam_args(spark_master_url: str, environment_type: str = 'DOCKER',
                    environment_config: str = '',
                    job_server_jar: str = '') -> List[str]:
  """An Apache Spark 3 cluster (``spark_master_url``: spark://host:port).

  As with Flink, SparkRunner downloads its job server jar unless
  ``job_server_jar`` names one; portable_beam_args reaches a job server
  (``apache/beam_spark3_job_server`` image) that is already running.
  """
  args = ['--runner=SparkRunner', f'--spark_master_url={spark_master_url}',
          '--spark_version=3']
  if job_server_jar:
    args.append(f'--spark_job_server_jar={job_server_jar}')
  return args + _portable_environment_args(environment_type,
                                           environment_config)
