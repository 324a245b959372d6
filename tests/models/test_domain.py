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
