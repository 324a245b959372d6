"""The report's and model card's jinja2 templates (files in templates/).

``templates/report.html`` (the run report), ``model_card.html`` and
``model_card.md``, and ``report.css`` (inlined in both pages: the report is
one self-contained file).  setup.py ships them as package data.
"""

import os
from typing import Any, Dict

import jinja2

from components import intervals as intervals_lib
from components.run_report.metrics import fmt

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             'templates')
REPORT_TEMPLATE = 'report.html'
CARD_HTML_TEMPLATE = 'model_card.html'
CARD_MD_TEMPLATE = 'model_card.md'
CSS_FILE = 'report.css'
TEMPLATE_FILES = (REPORT_TEMPLATE, CARD_HTML_TEMPLATE, CARD_MD_TEMPLATE,
                  CSS_FILE)


def _loader() -> jinja2.FileSystemLoader:
  return jinja2.FileSystemLoader(TEMPLATES_DIR)


def _environment() -> jinja2.Environment:
  """The HTML pages' environment: autoescaped, fmt and itext as globals."""
  env = jinja2.Environment(loader=_loader(), autoescape=True,
                           undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True)
  env.globals['fmt'] = fmt
  env.globals['itext'] = intervals_lib.text
  return env


def _markdown_environment() -> jinja2.Environment:
  """The model card's Markdown: no escaping, blocks keep their newlines."""
  return jinja2.Environment(loader=_loader(),
                            undefined=jinja2.StrictUndefined)


def css() -> str:
  """report.css as it is (not a template)."""
  with open(os.path.join(TEMPLATES_DIR, CSS_FILE), encoding='utf-8') as f:
    return f.read()


def render_report(**context: Any) -> str:
  """report.html, from the report's context (see builder.build_report)."""
  return _environment().get_template(REPORT_TEMPLATE).render(
      css=css(), **context)


def render_model_card(card: Dict[str, Any]) -> Dict[str, str]:
  """{'md': model_card.md, 'html': model_card.html} of one card context."""
  return {
      'md': _markdown_environment().get_template(CARD_MD_TEMPLATE).render(
          c=card),
      'html': _environment().get_template(CARD_HTML_TEMPLATE).render(
          c=card, css=css())}
