"""Where a run's temporary files go, and their removal when it ends.

TFX and Beam leave temporary folders behind: every executor that runs Beam
with non-empty ``beam_pipeline_args`` has TFX build a 49 MB sdist of its own
installation in a new temporary folder that nothing removes
(tfx.utils.dependency_utils.build_ephemeral_package), and Beam's portable
runners stage files in others.  pipeline/local_runner.py runs each pipeline
in a scratch folder of its own; the tests put theirs under pytest's base temp
folder (tests/conftest.py).
"""

import contextlib
import os
import shutil
import tempfile

SCRATCH_PREFIX = 'skinlesion-run-'


@contextlib.contextmanager
def temporary_files_in(folder: str):
  """Points this process's temporary files (``tempfile``) and those of the
  processes it starts (``TMPDIR``: Beam's worker processes, TFX's sdist
  build) at ``folder`` while the block runs; both are restored after."""
  saved_tempdir, saved_env = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir = folder
  os.environ['TMPDIR'] = folder
  try:
    yield folder
  finally:
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
      os.environ.pop('TMPDIR', None)
    else:
      os.environ['TMPDIR'] = saved_env


@contextlib.contextmanager
def scratch_tempdir():
  """A fresh folder for one run's temporary files (temporary_files_in),
  deleted when the run ends, however it ends."""
  scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
  try:
    with temporary_files_in(scratch):
      yield scratch
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
