"""models/domain.py: the one definition of the domain, free of dependencies."""

import subprocess
import sys

import pytest

from models import domain
from pipeline import configs
from tests.conftest import PROJECT_ROOT


def test_imports_nothing_beyond_the_standard_library():
  code = ('import sys; import models.domain; '
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'keras', 'numpy', 'tfx', 'apache_beam', 'pipeline',"
          " 'components')))")
  out = subprocess.run([sys.executable, '-c', code], cwd=PROJECT_ROOT,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == '[]'


@pytest.mark.slow  # Imports every module in a fresh interpreter.
def test_components_and_models_do_not_import_the_pipeline_package():
  code = ('import sys; import models.registry, models.trainer, '
          'components.image_example_gen.executor, '
          'components.run_report.builder, components.interval_gate; '
          "print(sorted(m for m in sys.modules if m.split('.')[0] == "
          "'pipeline'))")
  out = subprocess.run([sys.executable, '-c', code], cwd=PROJECT_ROOT,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip().splitlines()[-1] == '[]'


def test_configs_re_exports_the_same_objects():
  for name in ('LABELS', 'LABEL_SETS', 'AGE_BANDS', 'age_band',
               'melanoma_class', 'LAYOUTS', 'SEX_VOCABULARY'):
    assert getattr(configs, name) is getattr(domain, name), name


def test_age_bands_cover_every_age_and_unknown():
  assert domain.age_band(None) == domain.UNKNOWN_AGE_BAND
  assert domain.age_band(float('nan')) == domain.UNKNOWN_AGE_BAND
  assert [domain.age_band(a) for a in (0, 29.9, 30, 44.9, 45, 60, 75, 120)] == [
      '<30', '<30', '30-44', '30-44', '45-59', '60-74', '>=75', '>=75']
  assert set(domain.AGE_BAND_NAMES) == {b[0] for b in domain.AGE_BANDS} | {
      domain.UNKNOWN_AGE_BAND}


def test_no_import_cycle_among_the_project_packages():
  """Every `from <package> import <module>` between the project's modules,
  lazy ones inside functions included, forms no cycle."""
  import ast  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  packages = ('models', 'components', 'pipeline', 'mobile_export')
  graph = {}
  for package in packages:
    for folder, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
      for name in files:
        if not name.endswith('.py'):
          continue
        path = os.path.join(folder, name)
        module = os.path.relpath(path, PROJECT_ROOT)[:-3].replace(os.sep, '.')
        module = module[:-len('.__init__')] if module.endswith(
            '.__init__') else module
        edges = set()
        with open(path) as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          if isinstance(node, ast.ImportFrom) and node.module and (
              node.module.split('.')[0] in packages):
            for alias in node.names:
              edges.add(f'{node.module}.{alias.name}')
              edges.add(node.module)
          elif isinstance(node, ast.Import):
            edges.update(a.name for a in node.names
                         if a.name.split('.')[0] in packages)
        graph[module] = edges
  graph = {m: {e for e in edges if e in graph and e != m}
           for m, edges in graph.items()}
  # Packages import their own submodules (lazy __init__ maps): drop the
  # package -> own submodule edges, which cannot make a cycle by themselves.
  graph = {m: {e for e in edges if not e.startswith(m + '.')}
           for m, edges in graph.items()}
  visiting, done, cycles = set(), set(), []

  def visit(module, path):
    if module in done:
      return
    if module in visiting:
      cycles.append(path[path.index(module):] + [module])
      return
    visiting.add(module)
    for target in sorted(graph[module]):
      visit(target, path + [module])
    visiting.discard(module)
    done.add(module)
  for module in sorted(graph):
    visit(module, [])
  assert not cycles, cycles
