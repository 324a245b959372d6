"""SubgroupGapGate: the blessing TFMA thresholds cannot express.

TFMA thresholds bound one slice's metric; this gate bounds the spread of a
metric *between* slices.  It reads the Evaluator's output
(``tfma.load_metrics``) and, for each slice family (a feature: sex, age band,
anatomical site), takes the groups (that feature's single-feature slices)
with at least ``min_examples`` test examples and a defined metric value
('unknown' groups are left out when ``exclude_unknown``), and computes the
gap = max - min of the metric over them.  The family passes when the gap is
<= ``max_gap``; a family with fewer than two such groups cannot be measured
and passes, recorded as not measurable.

Output: a standard ``ModelBlessing`` with custom property ``blessed`` (1 when
every family passes, else 0) and the Evaluator's ``current_model`` /
``current_model_id``, and ``gap_report.json`` in its URI::

  {"gates": [{"gate": "subgroup_gap", "metric": ..., "slice_family": ...,
              "groups": {group: {"value": v, "examples": n}},
              "excluded": {group: {"value": v, "examples": n, "reason": r}},
              "value": gap or null, "bound": max_gap, "passed": bool,
              "min_examples": n, "note": ...}, ...],
   "blessed": bool}

MobilePusher pushes only when this blessing and the Evaluator's are both
positive.  (The latest-blessed-model resolver reads the Evaluator's
blessings only: the regression baseline is the latest model that passed
TFMA's thresholds.)
"""

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from models import features

GAP_REPORT_FILE = 'gap_report.json'
GATE_NAME = 'subgroup_gap'
EXAMPLE_COUNT = 'example_count'
NO_CLASS = -1  # class_id parameter of a metric without a class sub key.

# (slice key as ((feature, value), ...), metric name, class id or None)
# -> value.
SliceMetrics = Dict[Tuple[Tuple[Tuple[str, Any], ...], str, Optional[int]],
                    float]


def read_slice_metrics(evaluation_uri: str) -> SliceMetrics:
  """The candidate model's non-diff metric values of every slice."""
  values: SliceMetrics = {}
  for metrics in tfma.load_metrics(evaluation_uri):
    slice_key = tuple(
        (column, value.decode() if isinstance(value, bytes) else value)
        for column, value in tfma.slicer.deserialize_slice_key(
            metrics.slice_key))
    for entry in metrics.metric_keys_and_values:
      key = entry.key
      if key.is_diff or key.model_name == tfma.BASELINE_KEY:
        continue
      if not entry.value.HasField('double_value'):
        continue
      class_id = (key.sub_key.class_id.value
                  if key.sub_key.HasField('class_id') else None)
      values[(slice_key, key.name, class_id)] = (
          entry.value.double_value.value)
  return values


def family_groups(values: SliceMetrics, family: str
                  ) -> Dict[str, Tuple[float, float]]:
  """group -> (examples, value) for the single-feature slices of family."""
  groups: Dict[str, Dict[str, float]] = {}
  for (slice_key, name, class_id), value in values.items():
    if len(slice_key) != 1 or slice_key[0][0] != family:
      continue
    group = str(slice_key[0][1])
    groups.setdefault(group, {})[(name, class_id)] = value
  return groups


def evaluate_gaps(values: SliceMetrics, families: Sequence[str], metric: str,
                  class_id: Optional[int], max_gap: float, min_examples: int,
                  exclude_unknown: bool = True) -> Dict[str, Any]:
  """The gap report (see the module docstring) of one evaluation."""
  gates = []
  for family in families:
    compared, excluded = {}, {}
    for group, metrics in sorted(family_groups(values, family).items()):
      examples = metrics.get((EXAMPLE_COUNT, None), 0.0)
      value = metrics.get((metric, class_id))
      entry = {'value': _number(value), 'examples': int(examples)}
      if exclude_unknown and group == features.UNKNOWN:
        excluded[group] = dict(entry, reason='unknown is not a group')
      elif examples < min_examples:
        excluded[group] = dict(entry, reason=f'fewer than {min_examples} '
                               'examples')
      elif value is None or math.isnan(value):
        excluded[group] = dict(entry, reason=f'{metric} undefined')
      else:
        compared[group] = entry
    if len(compared) >= 2:
      scores = [g['value'] for g in compared.values()]
      gap = max(scores) - min(scores)
      passed = gap <= max_gap
      best = max(compared, key=lambda g: compared[g]['value'])
      worst = min(compared, key=lambda g: compared[g]['value'])
      note = (f'{metric} {best} {compared[best]["value"]:.4f} - {worst} '
              f'{compared[worst]["value"]:.4f} = {gap:.4f} '
              f'{"<=" if passed else ">"} {max_gap:.4f}')
    else:
      gap, passed = None, True
      note = (f'not measurable: {len(compared)} group(s) with >= '
              f'{min_examples} examples and a defined {metric}')
    gates.append({'gate': GATE_NAME, 'metric': _metric_label(metric, class_id),
                  'slice_family': family, 'groups': compared,
                  'excluded': excluded, 'value': gap, 'bound': max_gap,
                  'passed': passed, 'min_examples': min_examples,
                  'note': note})
  return {'gates': gates, 'blessed': all(g['passed'] for g in gates)}


def _metric_label(metric: str, class_id: Optional[int]) -> str:
  return metric if class_id is None else f'{metric} (classId:{class_id})'


def _number(value: Optional[float]) -> Optional[float]:
  return None if value is None or math.isnan(value) else float(value)


def failures(report: Dict[str, Any]) -> List[str]:
  """One line per failed family, with the gap and the bound."""
  return [f'{g["gate"]} [{g["slice_family"]}] {g["metric"]}: gap '
          f'{g["value"]:.4f} > bound {g["bound"]:.4f} (by '
          f'{g["value"] - g["bound"]:.4f}; {g["note"]})'
          for g in report['gates'] if not g['passed']]


def read_report(blessing_uri: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(os.path.join(blessing_uri, GAP_REPORT_FILE)) as f:
    return json.load(f)


@component
def SubgroupGapGate(
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    model: InputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    slice_families: Parameter[str],
    metric: Parameter[str],
    class_id: Parameter[int],
    max_gap: Parameter[float],
    min_examples: Parameter[int],
    exclude_unknown: Parameter[int],
) -> None:
  """Blesses the model when no slice family's metric gap exceeds max_gap.

  Args:
    evaluation: the Evaluator's output.
    model: the evaluated model (recorded as the blessing's current_model).
    blessing: ModelBlessing (``blessed`` 1/0) with gap_report.json.
    slice_families: JSON list of feature keys, e.g. ["sex", "age_band"].
    metric: a TFMA metric name of the Evaluator's output.
    class_id: the metric's class sub key, or -1 for none.
    max_gap: upper bound on max - min of the metric between groups.
    min_examples: groups with fewer test examples are not compared.
    exclude_unknown: 1: leave 'unknown' groups out.
  """
  report = evaluate_gaps(
      read_slice_metrics(evaluation.uri), json.loads(slice_families), metric,
      None if class_id == NO_CLASS else class_id, max_gap, min_examples,
      bool(exclude_unknown))
  tf.io.gfile.makedirs(blessing.uri)
  with tf.io.gfile.GFile(os.path.join(blessing.uri, GAP_REPORT_FILE),
                         'w') as f:
    f.write(json.dumps(report, indent=2) + '\n')
  blessing.set_int_custom_property('blessed', int(report['blessed']))
  blessing.set_string_custom_property('current_model', model.uri)
  blessing.set_int_custom_property('current_model_id', model.id)
  for gate in report['gates']:
    logging.info('SubgroupGapGate [%s] %s: %s', gate['slice_family'],
                 'passed' if gate['passed'] else 'FAILED', gate['note'])
