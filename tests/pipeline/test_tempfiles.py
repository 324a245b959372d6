"""pipeline/tempfiles.py: a run's temporary files go to one folder, deleted
when the run ends."""

import os
import subprocess
import sys
import tempfile

import pytest

from pipeline import tempfiles


def _child_tempdir():
  """The temporary folder a process started now would use."""
  return subprocess.run(
      [sys.executable, '-c', 'import tempfile; print(tempfile.gettempdir())'],
      check=True, capture_output=True, text=True).stdout.strip()


def test_temporary_files_go_to_the_folder_for_this_process_and_children(
    tmp_path):
  before = (tempfile.gettempdir(), os.environ.get('TMPDIR'))
  with tempfiles.temporary_files_in(str(tmp_path)) as folder:
    assert folder == str(tmp_path)
    made = tempfile.mkdtemp()
    assert os.path.dirname(made) == str(tmp_path)
    assert _child_tempdir() == str(tmp_path)
  assert (tempfile.gettempdir(), os.environ.get('TMPDIR')) == before


@pytest.mark.parametrize('tmpdir_set', [True, False])
def test_the_previous_settings_come_back_after_an_error(tmp_path, monkeypatch,
                                                        tmpdir_set):
  if tmpdir_set:
    monkeypatch.setenv('TMPDIR', '/somewhere/else')
  else:
    monkeypatch.delenv('TMPDIR', raising=False)
  saved = tempfile.tempdir
  with pytest.raises(RuntimeError, match='boom'):
    with tempfiles.temporary_files_in(str(tmp_path)):
      raise RuntimeError('boom')
  assert tempfile.tempdir == saved
  assert os.environ.get('TMPDIR') == ('/somewhere/else' if tmpdir_set
                                      else None)


def test_scratch_folder_and_what_a_child_left_in_it_are_deleted(tmp_path):
  with tempfiles.temporary_files_in(str(tmp_path)):
    with tempfiles.scratch_tempdir() as scratch:
      assert os.path.basename(scratch).startswith(tempfiles.SCRATCH_PREFIX)
      assert os.path.dirname(scratch) == str(tmp_path)
      # What TFX does: a folder of its own, never removed.
      left = subprocess.run(
          [sys.executable, '-c',
           'import tempfile; d = tempfile.mkdtemp(); '
           'open(d + "/sdist.tar.gz", "w").write("x"); print(d)'],
          check=True, capture_output=True, text=True).stdout.strip()
      assert os.path.dirname(left) == scratch
      assert tempfile.gettempdir() == scratch
    assert not os.path.exists(scratch)
    assert tempfile.gettempdir() == str(tmp_path)
  assert os.listdir(tmp_path) == []


def test_scratch_folder_is_deleted_when_the_run_fails(tmp_path):
  with tempfiles.temporary_files_in(str(tmp_path)):
    with pytest.raises(ValueError):
      with tempfiles.scratch_tempdir() as scratch:
        open(os.path.join(scratch, 'partial'), 'w').close()
        raise ValueError('component failed')
    assert not os.path.exists(scratch)


# What a Beam Flink job server does (apache_beam job_server.SubprocessJobServer
# and StopOnExitJobServer): it makes its root in the temporary folder when it
# starts, and removes it, strictly, when the process exits.
_JOB_SERVER_CHILD = '''
import atexit, os, shutil, sys, tempfile
from pipeline import tempfiles
with tempfiles.scratch_tempdir() as scratch:
  root = tempfile.mkdtemp(prefix=tempfiles.BEAM_JOB_SERVER_PREFIX)
  os.mkdir(os.path.join(root, 'artifacts'))
  open(os.path.join(root, 'artifacts', 'sdist.tar.gz'), 'w').write('x')
  open(os.path.join(scratch, 'other'), 'w').write('x')
  atexit.register(shutil.rmtree, root)
print(scratch)
print(sorted(os.listdir(scratch)), os.listdir(root))
'''


def test_a_beam_job_server_root_is_emptied_and_removed_after_its_exit_handler(
    tmp_path):
  env = dict(os.environ, TMPDIR=str(tmp_path),
             PYTHONPATH=os.pathsep.join(sys.path))
  child = subprocess.run([sys.executable, '-c', _JOB_SERVER_CHILD],
                         capture_output=True, text=True, env=env, check=True)
  scratch, listing = child.stdout.splitlines()
  # After the run: only the job server's root is left, and it is empty.
  assert listing.startswith("['beam-temp") and listing.endswith('] []')
  # At exit the job server's handler found its root, then the scratch went.
  assert 'Exception ignored' not in child.stderr, child.stderr
  assert not os.path.exists(scratch)
  assert os.listdir(tmp_path) == []


def test_beam_still_names_its_job_server_root_so():
  import inspect  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability import job_server  # pylint: disable=g-import-not-at-top
  source = inspect.getsource(job_server.SubprocessJobServer.start)
  assert f"prefix='{tempfiles.BEAM_JOB_SERVER_PREFIX}'" in source
  assert 'atexit.register(self.stop)' in inspect.getsource(
      job_server.StopOnExitJobServer.start)
