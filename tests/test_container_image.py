"""The container image definition (Dockerfile) and its lock-file check.

No Docker engine here: the image cannot be built.  These tests read the
Dockerfile as Docker would (instructions, build args, continuations) and
check it against the pins the project is tested with, and run the check the
image build runs (tools/check_lock.py) against this environment.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from tfx.utils import version_utils

from pipeline import configs
from tests.conftest import PROJECT_ROOT

LOCK = os.path.join(PROJECT_ROOT, 'requirements.lock')
CHECK_LOCK = os.path.join(PROJECT_ROOT, 'tools', 'check_lock.py')
# tools/ is a folder of scripts, not a package.
_spec = importlib.util.spec_from_file_location('check_lock', CHECK_LOCK)
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)


def _instructions():
  """[(INSTRUCTION, argument)] with continuations joined, comments dropped."""
  with open(os.path.join(PROJECT_ROOT, 'Dockerfile')) as f:
    text = f.read()
  lines = [l for l in text.splitlines() if not l.lstrip().startswith('#')]
  joined = re.sub(r'\\\n', ' ', '\n'.join(lines))
  out = []
  for line in joined.splitlines():
    if line.strip():
      word, _, arg = line.strip().partition(' ')
      out.append((word.upper(), ' '.join(arg.split())))
  return out


def _build_args():
  return dict(arg.split('=', 1) for word, arg in _instructions()
              if word == 'ARG' and '=' in arg)


def _from_images():
  args = _build_args()
  return [re.sub(r'\$\{(\w+)\}', lambda m: args[m.group(1)], arg.split()[0])
          for word, arg in _instructions() if word == 'FROM']


def _pin(name):
  return check_lock.read_pins(LOCK)[check_lock._normalize(name)]  # pylint: disable=protected-access


def test_base_is_the_official_tfx_image_of_the_pinned_tfx():
  beam_sdk, base = _from_images()
  # The image TFX itself runs its Kubeflow components in, for this release.
  assert base == ('gcr.io/tfx-oss-public/tfx:'
                  + version_utils.get_image_version())
  assert _pin('tfx') == version_utils.get_image_version() == '1.16.0'
  # Beam's SDK harness boot of the pinned Beam, for the pinned Python.
  python = f'{sys.version_info.major}.{sys.version_info.minor}'
  assert beam_sdk == f'apache/beam_python{python}_sdk:{_pin("apache-beam")}'
  assert python == '3.10' and _pin('apache-beam') == '2.61.0'
  assert ('ENTRYPOINT', '["/opt/apache/beam/boot"]') in _instructions()


def test_installs_the_lock_file_then_the_project_and_checks_the_pins():
  runs = [arg for word, arg in _instructions() if word == 'RUN']
  install_lock = next(i for i, r in enumerate(runs)
                      if '--no-deps -r requirements.lock' in r)
  install_project = next(i for i, r in enumerate(runs)
                         if re.search(r'pip install .*--no-deps \.( |$)', r))
  assert install_lock < install_project
  assert 'python tools/check_lock.py requirements.lock' in runs[install_project]
  assert 'libusb-1.0-0' in ' '.join(runs)  # tflite-support needs it.
  assert "sys.version_info[:2] == (3, 10)" in runs[install_lock]


def test_project_is_copied_to_the_path_the_runner_uses():
  instructions = _instructions()
  assert ('WORKDIR', configs.PROJECT_DIR_IN_IMAGE) in instructions
  copied = {arg.split()[0].rstrip('/') for word, arg in instructions
            if word == 'COPY' and not arg.startswith('--from')}
  with open(os.path.join(PROJECT_ROOT, 'setup.py')) as f:
    setup = ast.parse(f.read())
  packages = next(ast.literal_eval(k.value) for node in ast.walk(setup)
                  if isinstance(node, ast.Call)
                  for k in node.keywords if k.arg == 'packages')
  # Subpackages (components.run_report, ...) travel inside their top folder.
  top_level = {p.split('.')[0] for p in packages}
  assert top_level | {'setup.py', 'requirements.lock',
                          'tools/check_lock.py'} == copied
  # models.trainer is what the compiled Trainer imports in the image.
  assert configs.INSTALLED_TRAINER_RUN_FN.split('.')[0] in top_level
  # The build context holds what is copied and nothing else (.venv is GBs).
  with open(os.path.join(PROJECT_ROOT, '.dockerignore')) as f:
    rules = [l.strip() for l in f if l.strip() and not l.startswith('#')]
  assert rules[0] == '*'
  assert {r[1:].rstrip('/') for r in rules if r.startswith('!')} == copied


def test_check_lock_passes_here_and_names_every_mismatch(tmp_path):
  result = subprocess.run([sys.executable, CHECK_LOCK, LOCK],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  pins = check_lock.read_pins(LOCK)
  assert pins['tensorflow'] == '2.16.2' and pins['kfp'] == '2.5.0'
  assert pins['protobuf'] == '3.20.3' and pins['keras'] == '3.12.4'
  assert check_lock.mismatches(
      {'tensorflow': '2.15.0', 'no-such-dist-xyz': '1.0', 'kfp': '2.5.0'}) == [
          'no-such-dist-xyz: pinned 1.0, installed nothing',
          'tensorflow: pinned 2.15.0, installed 2.16.2']
  bad = tmp_path / 'bad.lock'
  bad.write_text('kfp>=2\n')
  with pytest.raises(ValueError, match='not a name==version pin'):
    check_lock.read_pins(str(bad))
