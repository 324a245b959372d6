"""Where a run's temporary files go, and their removal when it ends.

TFX and Beam leave temporary folders behind: every executor that runs Beam
with non-empty ``beam_pipeline_args`` has TFX build a 49 MB sdist of its own
installation in a new temporary folder that nothing removes
(tfx.utils.dependency_utils.build_ephemeral_package), and Beam's portable
runners stage files in others.  pipeline/local_runner.py runs each pipeline
in a scratch folder of its own; the tests put theirs under pytest's base temp
folder (tests/conftest.py).

One of Beam's folders outlives the run: a Flink job server
(apache_beam.runners.portability.job_server.SubprocessJobServer) makes its
temporary root, ``beam-temp*``, when it starts, keeps running after the
pipeline ends, and deletes that root (``shutil.rmtree``, which raises on a
missing folder) only at process exit, from an ``atexit`` handler of
StopOnExitJobServer.  The scratch folder therefore empties such a root
instead of removing it, and removes itself from an ``atexit`` handler of its
own, registered before any job server's and so run after them.
"""

import atexit
import contextlib
import functools
import os
import shutil
import tempfile

SCRATCH_PREFIX = 'skinlesion-run-'
# The prefix of a Beam job server's temporary root (SubprocessJobServer.start).
BEAM_JOB_SERVER_PREFIX = 'beam-temp'


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
  deleted when the run ends, however it ends.  A Beam job server's root in
  it is emptied then, and removed with the folder when the process exits,
  after the job server's own exit handler (module docstring)."""
  scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
  remove_at_exit = functools.partial(shutil.rmtree, scratch,
                                     ignore_errors=True)
  atexit.register(remove_at_exit)
  try:
    with temporary_files_in(scratch):
      yield scratch
  finally:
    if (not os.path.isdir(scratch)
        or _empty_keeping_job_server_roots(scratch)):
      atexit.unregister(remove_at_exit)
      shutil.rmtree(scratch, ignore_errors=True)


def _empty_keeping_job_server_roots(folder: str) -> bool:
  """Deletes everything in ``folder`` but the (emptied) roots of Beam job
  servers; True when none was there, i.e. ``folder`` itself may go now."""
  kept = False
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    if name.startswith(BEAM_JOB_SERVER_PREFIX) and os.path.isdir(path):
      for inner in os.listdir(path):
        _remove(os.path.join(path, inner))
      kept = True
    else:
      _remove(path)
  return not kept


def _remove(path: str):
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
