"""Runs the pipeline locally: LocalDagRunner, SQLite MLMD, Beam in-process.

As a script (what the TFX CLI does) it reads its settings from the
environment (``SKINLESION_DATA_ROOT``, ``SKINLESION_LAYOUT``,
``SKINLESION_HOME``, ... see ``configs.Settings``):

  python pipeline/local_runner.py
  tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
  tfx run create --engine local --pipeline_name skin-lesion-tfx

``skinlesion run`` calls ``run()`` with the same settings object.
"""

import os
import sys

if __package__ in (None, ''):
  # Run as a file: this folder (which holds pipeline.py) must not shadow the
  # `pipeline` package; the project root must be importable.
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _here]
  sys.path.insert(0, os.path.dirname(_here))

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib


def run(settings: configs.Settings, ingest_only: bool = False) -> None:
  """Runs the whole pipeline synchronously; raises if a component fails.

  TFX hands the process's command line to every executor (as absl flags and
  as extra Beam arguments).  The settings are already parsed, so the caller's
  arguments (``skinlesion run --data ...``, or pytest's ``-v``, which absl
  reads as ``--verbosity``) are hidden from the components while they run.
  """
  settings.validate()
  argv = sys.argv
  sys.argv = argv[:1]
  try:
    tfx.orchestration.LocalDagRunner().run(
        pipeline_lib.create_pipeline(settings, ingest_only=ingest_only))
  finally:
    sys.argv = argv


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  run(configs.Settings.from_env())
