"""Compiles the pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines.

The same pipeline as the local runs (``pipeline.create_pipeline``), compiled
by TFX's ``KubeflowV2DagRunner`` into a KFP v2 pipeline definition; nothing
runs and nothing is uploaded here (compiling needs no cluster and no cloud
credentials).  Settings come from the environment (``configs.Settings``):

  SKINLESION_PIPELINE_IMAGE   the image built from Dockerfile (required); tag
                              every build uniquely: Vertex keys its cache on
                              the image name, not its contents
  SKINLESION_HOME             gs:// (or s3://) folder: pipeline root
                              <home>/pipelines/<name>, models pushed to
                              <home>/serving_model/<name>
  SKINLESION_DATA_ROOT        gs:// (or s3://) archive root
  SKINLESION_SERVING_DIR      optional: where blessed models are pushed
  SKINLESION_BEAM_PIPELINE_ARGS  Beam flags for the data components (e.g.
                              beam_args.dataflow_beam_args)
  SKINLESION_TRAINER_CPU_LIMIT, _MEMORY_LIMIT, _ACCELERATOR_TYPE,
  _ACCELERATOR_COUNT          the Trainer's container resources

  python pipeline/kubeflow_runner.py [--output FILE.json|FILE.yaml]
  tfx pipeline compile --engine vertex \
      --pipeline_path pipeline/kubeflow_runner.py

The output goes to ``--output``, else ``$SKINLESION_KUBEFLOW_OUTPUT`` (the
TFX CLI passes no arguments), else ``build/kubeflow/skin-lesion-tfx.json``.
A ``.json`` output is a PipelineJob (the pipeline spec plus its runtime
config, pipeline root included) for Vertex AI Pipelines; a ``.yaml`` output is
the bare PipelineSpec (schema 2.1) that the KFP v2 client uploads, the
pipeline root then being given at submission.

In the image the project is installed at ``configs.PROJECT_DIR_IN_IMAGE``;
the Trainer imports ``configs.INSTALLED_TRAINER_RUN_FN`` from it, so the
compiled pipeline carries no path of the compiling machine.
"""

import argparse
import dataclasses
import os
import sys

if __package__ in (None, ''):
  # Run as a file (python or the TFX CLI): this folder (which holds
  # pipeline.py) must not shadow the `pipeline` package; the project root must
  # be importable.
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _here]
  sys.path.insert(0, os.path.dirname(_here))

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx

from pipeline import beam_args
from pipeline import configs
from pipeline import pipeline as pipeline_lib

OUTPUT_ENV = 'SKINLESION_KUBEFLOW_OUTPUT'
DEFAULT_OUTPUT = os.path.join(configs.PROJECT_ROOT, 'build', 'kubeflow',
                              configs.PIPELINE_NAME + '.json')


def kubeflow_settings(settings: configs.Settings) -> configs.Settings:
  """Checks settings for a cluster run; fills in the in-image Trainer code.

  Raises:
    ValueError: a setting cannot work on a cluster (no image, a local path).
  """
  if not settings.pipeline_image:
    raise ValueError('set SKINLESION_PIPELINE_IMAGE to the image built from '
                     'the Dockerfile (e.g. REGION-docker.pkg.dev/PROJECT/'
                     'REPO/skin-lesion-tfx:GIT_SHA)')
  image_name = settings.pipeline_image.rsplit('/', 1)[-1]
  if '@' not in image_name and (':' not in image_name
                                or image_name.endswith(':latest')):
    logging.warning(
        'Image %s has no fixed tag: Vertex keys its cache on the image name, '
        'so a rebuilt image with new code can be served stale cached results. '
        'Tag every build uniquely (e.g. with the git commit).',
        settings.pipeline_image)
  for name in ('home', 'data_root', 'serving_dir'):
    value = getattr(settings, name)
    if value and not value.startswith(configs.REMOTE_URI_SCHEMES):
      raise ValueError(
          f'{name} must be a {" or ".join(configs.REMOTE_URI_SCHEMES)} URI on '
          f'a cluster (every component runs in its own container), got '
          f'{value!r}: set SKINLESION_{name.upper()}')
  if any(getattr(settings, name).startswith('s3://')
         for name in ('home', 'data_root', 'serving_dir')):
    logging.warning(
        's3:// URIs need TensorFlow\'s S3 file system (tensorflow-io) loaded '
        'in every component process; the Dockerfile\'s image does not load '
        'it (README.md, "Running at scale").')
  pipeline_lib.resolve_auto_labels(settings)  # On the compiling machine.
  settings.validate()  # Layout and labels.
  pipeline_lib.trainer_resources(settings)  # Raises on inconsistent values.
  # The label domain derived from the label list, written under the home
  # (which holds the pipeline root, so the cluster reads it too).
  schema_path = pipeline_lib.derive_schema(settings)
  if schema_path == settings.schema_path and schema_path.startswith(
      configs.PROJECT_ROOT + os.sep):
    # The curated schema ships in the image with the project.
    schema_path = os.path.join(
        configs.PROJECT_DIR_IN_IMAGE,
        os.path.relpath(schema_path, configs.PROJECT_ROOT))
  return dataclasses.replace(
      settings, schema_path=schema_path, trainer_run_fn=(
          settings.trainer_run_fn or configs.INSTALLED_TRAINER_RUN_FN))


def compile_pipeline(settings: configs.Settings, output_file: str) -> dict:
  """Writes the KFP v2 definition of the pipeline; returns it as a dict.

  The TFX CLI (``tfx pipeline compile --engine vertex``) intercepts this
  runner's ``run`` and compiles through it as well.
  """
  settings = kubeflow_settings(settings)
  output_file = os.path.abspath(output_file)
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          display_name=settings.pipeline_name,
          default_image=settings.pipeline_image,
          # The YAML form is what the KFP v2 client reads: schema 2.1.
          use_pipeline_spec_2_1=output_file.endswith(('.yaml', '.yml'))),
      output_dir=os.path.dirname(output_file),
      output_filename=os.path.basename(output_file))
  return runner.run(pipeline_lib.create_pipeline(
      settings, orchestrator=pipeline_lib.KUBEFLOW))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output',
                      default=os.environ.get(OUTPUT_ENV) or DEFAULT_OUTPUT,
                      help='.json (Vertex PipelineJob) or .yaml (KFP '
                      f'PipelineSpec); default ${OUTPUT_ENV} or '
                      f'{DEFAULT_OUTPUT}')
  args = parser.parse_args(argv)
  compile_pipeline(configs.Settings.from_env(), args.output)
  print(f'Wrote {os.path.abspath(args.output)}')


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  main()
