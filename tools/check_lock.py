"""Checks that the installed packages are exactly requirements.lock's pins.

  python tools/check_lock.py [requirements.lock]

The container image (Dockerfile) runs it after installing the lock file on
top of the TFX base image, whose own package versions may differ: the build
fails unless every pinned distribution is installed at its pinned version,
so Kubeflow, Vertex AI and Beam workers run the stack that was tested.
Exits 1 and lists every mismatch otherwise.
"""

import importlib.metadata
import re
import sys
from typing import Dict, List

_PIN = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)')


def read_pins(path: str) -> Dict[str, str]:
  """Distribution name (normalized) -> pinned version."""
  pins = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      match = _PIN.match(line)
      if not match:
        raise ValueError(f'{path}: not a name==version pin: {line!r}')
      pins[_normalize(match.group(1))] = match.group(2)
  return pins


def _normalize(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def mismatches(pins: Dict[str, str]) -> List[str]:
  """'name: pinned X, installed Y' for every pin the environment breaks."""
  problems = []
  for name, version in sorted(pins.items()):
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = None
    if installed != version:
      problems.append(f'{name}: pinned {version}, installed '
                      f'{installed or "nothing"}')
  return problems


def main(argv: List[str]) -> int:
  path = argv[1] if len(argv) > 1 else 'requirements.lock'
  pins = read_pins(path)
  problems = mismatches(pins)
  for problem in problems:
    print(problem, file=sys.stderr)
  print(f'{len(pins) - len(problems)} of {len(pins)} pins of {path} '
        'installed as pinned')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
