"""The image check imports neither Beam nor TFX (predict and serve use it)."""

import pathlib
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]

_CHECK = """
import sys
from components import image_example_gen
from components.image_example_gen import images, layouts
import pipeline.predict
assert image_example_gen.ImageCheck is images.ImageCheck
print(sorted(m for m in ('apache_beam', 'tfx') if m in sys.modules))
"""


def test_images_layouts_and_predict_import_neither_beam_nor_tfx():
  out = subprocess.run([sys.executable, '-c', _CHECK], capture_output=True,
                       text=True, check=True, cwd=_ROOT).stdout
  assert out.strip().splitlines()[-1] == '[]'


def test_executor_names_are_re_exported_on_first_use():
  from components import image_example_gen  # pylint: disable=g-import-not-at-top
  from components.image_example_gen import executor  # pylint: disable=g-import-not-at-top
  assert image_example_gen.Executor is executor.Executor
  assert image_example_gen.REPORT_FILE == executor.REPORT_FILE
  assert 'ImageExampleGen' in dir(image_example_gen)
