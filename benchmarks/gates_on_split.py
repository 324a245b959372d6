"""The IntervalGate's subgroup gates and intervals on any split (issue 14).

The pipeline's IntervalGate scores the test split; a configuration chosen on
the eval split should also be checked there against the gates the run will
apply, or a candidate better on eval can be refused on test by a subgroup it
was never looked at on.  This scores an exported model (the examples
signature) on ``--split`` with the pipeline's own functions and the gate
settings of ``configs.Settings`` (``--preset real``: REAL_DATA_PRESET's):
per slice family the worst group's difference from the rest with its
family-wise interval, whether the gate passes, and the headline intervals.

  .venv/bin/python benchmarks/gates_on_split.py --examples E \\
      --serving RUN/serving --split eval --preset real --out gates_eval.json
"""

import argparse
import dataclasses
import json
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
  sys.path.insert(0, PROJECT_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from components import interval_gate  # pylint: disable=g-import-not-at-top
from components import predictions as predictions_lib  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top


def gates_on_split(serving_dir: str, examples_dir: str, split: str,
                   settings: configs.Settings,
                   scored: predictions_lib.Predictions = None) -> dict:
  """What IntervalGate computes, on ``split`` of an Examples folder (its
  labels, from the folder's labels file, with the gate settings of
  ``settings``); ``scored``: the model's predictions on that split when
  already made (predictions.predict_split)."""
  if scored is None:
    files = [os.path.join(examples_dir, f'Split-{split}', '*')]
    scored = predictions_lib.predict_split(tf.saved_model.load(serving_dir),
                                           files)
  with open(os.path.join(examples_dir, features.LABELS_FILE),
            encoding='utf-8') as f:
    settings = dataclasses.replace(settings, labels=tuple(f.read().split()))
  result, gates = interval_gate.score_candidate(
      scored, **pipeline_lib.interval_gate_scoring(settings))
  return {'serving': serving_dir, 'split': split,
          'examples': int(len(scored.labels)),
          'overall': result['overall'], 'subgroup_gates': gates,
          'passed': all(g['passed'] for g in gates)}


def summary(report: dict) -> dict:
  """The gates of a ``gates_on_split`` report in brief: whether all pass,
  and per slice family whether it passes with the gate's note (the worst
  group's difference, or the failed groups)."""
  return {'passed': report['passed'],
          'families': {g['slice_family']: {'passed': g['passed'],
                                           'note': g['note']}
                       for g in report['subgroup_gates']}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True,
                      help='an ImageExampleGen Examples artifact folder')
  parser.add_argument('--serving', required=True, action='append',
                      help='an exported model folder (repeatable)')
  parser.add_argument('--split', default='eval', choices=('eval', 'test'))
  parser.add_argument('--preset', choices=('real',),
                      help='the gate settings of REAL_DATA_PRESET')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  settings = configs.Settings(**(configs.REAL_DATA_PRESET
                                 if args.preset == 'real' else {}))
  reports = []
  for serving in args.serving:
    report = gates_on_split(serving, args.examples, args.split, settings)
    reports.append(report)
    print(serving, 'PASSED' if report['passed'] else 'FAILED')
    for gate in report['subgroup_gates']:
      print(f"  {gate['slice_family']:13s} "
            f"{'passed' if gate['passed'] else 'FAILED'}: {gate['note']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(reports, f, indent=1, default=float)
  return 0


if __name__ == '__main__':
  sys.exit(main())
