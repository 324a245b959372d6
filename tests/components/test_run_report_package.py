"""components/run_report/ as a package: its templates ship, its modules stay
small, its readers are the ones summary.py and mobile_pusher.py use.

Fast: no model, no TFMA run.
"""

import ast
import fnmatch
import os

from components import run_report
from components.run_report import render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _card(**changes):
  card = dict(
      name='tiny', version='3', generated='2026-01-01 00:00 UTC',
      verdict='blessed and pushed', intended_use='Decision support <b>.',
      out_of_scope='self-diagnosis', model_description='a model',
      data_lines=['one line'], splits=['train', 'test'],
      class_rows=[['mel', 3, 1]], biases=['few images'],
      test_examples='4', headline=[('Balanced accuracy', '0.5000')],
      class_metric_columns=['examples'],
      class_metric_rows=[{'label': 'mel', 'values': ['1']}],
      slices=[], limitations=['held-out split'], gating=['Decision: ok'])
  card.update(changes)
  return card


def test_templates_are_files_the_package_data_ships():
  for name in render.TEMPLATE_FILES:
    assert os.path.isfile(os.path.join(render.TEMPLATES_DIR, name)), name
  with open(os.path.join(ROOT, 'setup.py')) as f:
    tree = ast.parse(f.read())
  (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, 'attr', '') == 'setup']
  keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
              if k.arg in ('packages', 'package_data')}
  assert 'components.run_report' in keywords['packages']
  globs = keywords['package_data']['components.run_report']
  for name in render.TEMPLATE_FILES:
    assert any(fnmatch.fnmatch(f'templates/{name}', g) for g in globs), name


def test_model_card_renders_from_the_template_files():
  card = render.render_model_card(_card())
  assert card['md'].startswith('# Model card: tiny\n')
  assert '- **Balanced accuracy**: 0.5000' in card['md']
  assert 'No slices were evaluated.' in card['md']
  # Markdown is not escaped; the HTML card is, and inlines report.css.
  assert 'Decision support <b>.' in card['md']
  assert 'Decision support &lt;b&gt;.' in card['html']
  assert '<style>\n' + render.css() + '</style>' in card['html']
  assert render.css().startswith('body{')


def test_every_module_of_the_package_is_under_700_lines():
  directory = os.path.dirname(run_report.__file__)
  for name in os.listdir(directory):
    if name.endswith('.py'):
      with open(os.path.join(directory, name)) as f:
        assert len(f.readlines()) < 700, name
