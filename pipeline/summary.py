"""What a run did, read back from ML Metadata: the end-of-run summary.

For the latest run of a pipeline: each component's status and wall time, the
blessing decision with the gated metric values and the headline metrics'
95% intervals (``0.612 [0.571, 0.650]``, IntervalGate), each failed gate
(TFMA threshold: metric, value, bound, by how much; subgroup and regression
gates: the group, the difference's interval, the bound),
the mobile export's parity verdict per .tflite format (and why a file was
kept out of the push), what was pushed where, and where the run report and
model card are.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from components import interval_gate
from components import intervals as intervals_lib
from components import tfma_metrics
from components.run_report import readers
from pipeline import configs

_STATE_NAMES = {v: k for k, v in
                metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass
class ComponentRun:
  node_id: str
  state: str
  seconds: float


@dataclasses.dataclass
class RunSummary:
  run_id: str
  components: List[ComponentRun]
  blessed: Optional[bool] = None
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  per_class_recall: Dict[str, float] = dataclasses.field(default_factory=dict)
  failed_thresholds: List[str] = dataclasses.field(default_factory=list)
  has_baseline: bool = False
  # The Evaluator's (TFMA thresholds) and the IntervalGate's verdicts;
  # ``blessed`` is True only when every gate that ran blessed the model.
  evaluator_blessed: Optional[bool] = None
  gate_blessed: Optional[bool] = None
  gate_report: Optional[Dict] = None
  # intervals.json (IntervalGate): 95% intervals of the headline metrics.
  intervals: Optional[Dict] = None
  pushed_model: Optional[str] = None
  # Paths of the pushed .tflite files (empty when none was pushed).
  pushed_tflite: List[str] = dataclasses.field(default_factory=list)
  manifest: Optional[str] = None
  # Why nothing was pushed (MobilePusher's not_pushed_reason), if so.
  not_pushed_reason: Optional[str] = None
  # The mobile export: None when it did not run; else format -> verdict
  # (passed, reasons, top1_agreement, balanced_accuracy_drop, bytes).
  mobile_verdicts: Optional[Dict[str, Dict]] = None
  mobile_note: Optional[str] = None
  examples_uri: Optional[str] = None
  charts_uri: Optional[str] = None
  # The RunReporter's output: report.html and the model card.
  report: Optional[str] = None
  model_card: Optional[str] = None

  @property
  def failed(self) -> List[str]:
    """Components that failed (or could not resolve their inputs)."""
    return [c.node_id for c in self.components if c.state == 'FAILED']

  def ingestion_report(self) -> Optional[Dict]:
    if not self.examples_uri:
      return None
    return readers.read_ingestion_report(self.examples_uri)

  def format(self) -> str:
    lines = [f'Run {self.run_id}', '', f'{"component":<34}{"status":<10}time']
    for c in self.components:
      lines.append(f'{c.node_id:<34}{c.state:<10}{c.seconds:6.1f} s')
    lines.append('')
    if self.blessed is None:
      lines.append('Blessing: no evaluation in this run.')
    else:
      verdict = 'BLESSED' if self.blessed else 'NOT BLESSED'
      baseline = ('against the latest blessed model' if self.has_baseline
                  else 'no earlier blessed model to compare with')
      lines.append(f'Blessing: {verdict} ({baseline})')
      for name, value in sorted(self.metrics.items()):
        lines.append(f'  {name:<32}{value:.4f}')
      if self.per_class_recall:
        lines.append('  recall per class: ' + ', '.join(
            f'{k} {v:.2f}' for k, v in self.per_class_recall.items()))
      if self.evaluator_blessed is not None:
        lines.append('  TFMA thresholds (Evaluator): ' + (
            'passed' if self.evaluator_blessed else 'FAILED'))
      for failure in self.failed_thresholds:
        lines.append(f'  FAILED: {failure}')
      if self.intervals is not None:
        overall = self.intervals['overall']
        lines.append(f'  95% intervals (bootstrap over lesions; '
                     f'{overall["examples"]} test images, '
                     f'{overall["lesions"]} lesions):')
        for key, _ in interval_gate.HEADLINE_METRICS:
          if key in overall['metrics']:
            lines.append(f'    {key:<30}'
                         f'{intervals_lib.text(overall["metrics"][key])}')
      if self.gate_report is not None:
        lines.append('  Subgroup and regression gates (IntervalGate): ' + (
            'passed' if self.gate_blessed else 'FAILED'))
        for gate in self.gate_report['gates']:
          name = gate.get('slice_family') or gate['gate']
          lines.append(f'    {name:<14}'
                       f'{"passed" if gate["passed"] else "FAILED"}: '
                       f'{gate["note"]}')
        for failure in interval_gate.failures(self.gate_report):
          lines.append(f'  FAILED: {failure}')
    lines.append('')
    lines.extend(format_mobile_verdicts(self.mobile_verdicts,
                                        self.mobile_note))
    lines.append('')
    pushed = self.pushed_model or (
        f'(none: {self.not_pushed_reason})' if self.not_pushed_reason
        else '(none)')
    if self.pushed_model and any(c.node_id == 'MobilePusher'
                                 and c.state == 'CACHED'
                                 for c in self.components):
      pushed += ' (by an earlier run; this run pushed nothing)'
    lines.append(f'Pushed SavedModel: {pushed}')
    lines.append('Pushed TFLite:     ' + (', '.join(self.pushed_tflite)
                                          or '(none)'))
    if self.manifest:
      lines.append(f'Manifest:          {self.manifest}')
    lines.append(f'Run report:        {self.report or "(none)"}')
    if self.model_card:
      lines.append(f'Model card:        {self.model_card}')
    return '\n'.join(lines)


def format_ingestion(report: Dict) -> str:
  """Counts per split and class, quarantine by reason, where the files are."""
  labels = report['labels']
  splits = list(report['examples_per_split'])
  lines = [f'Ingested {report["examples"]} of {report["input_records"]} inputs '
           f'({report["input_rows"]} metadata rows + '
           f'{report["image_files_without_row"]} image files without a row); '
           f'quarantined {report["quarantined"]} '
           f'({report["quarantined_fraction"]:.1%}); converted to RGB JPEG '
           f'{report["converted_to_rgb_jpeg"]}.', '']
  # The first column fits the longest class name (folder archives name
  # classes freely: 'Dermatitis Atopik').
  width = max([10] + [len(name) + 2 for name in labels])
  lines.append(f'{"class":<{width}}' + ''.join(f'{s:>9}' for s in splits))
  per = report['examples_per_split_and_class']
  for name in labels:
    lines.append(f'{name:<{width}}' +
                 ''.join(f'{per[s][name]:>9}' for s in splits))
  lines.append(f'{"total":<{width}}' + ''.join(
      f'{report["examples_per_split"][s]:>9}' for s in splits))
  lines.append(f'{"lesions":<{width}}' + ''.join(
      f'{report["lesions_per_split"][s]:>9}' for s in splits))
  lines.append('')
  if report['quarantined_by_reason']:
    lines.append('Quarantined by reason: ' + ', '.join(
        f'{k} {v}' for k, v in report['quarantined_by_reason'].items()))
  else:
    lines.append('Quarantined by reason: none')
  dupes = report['identical_images_within_a_lesion']
  if dupes:
    lines.append(f'Identical images within one lesion (kept, reported): '
                 + '; '.join(', '.join(d['image_ids']) for d in dupes))
  lines.append(f'Quarantine: {report["quarantine_file"]}')
  return '\n'.join(lines)


def format_mobile_verdicts(verdicts: Optional[Dict[str, Dict]],
                           note: Optional[str] = None) -> List[str]:
  """Summary lines of the mobile export's parity gate."""
  if verdicts is None:
    return [f'Mobile export: {note or "did not run in this run"}.']
  lines = ['Mobile export (parity with the SavedModel on the test split):']
  width = max([9] + [len(fmt) + 1 for fmt in verdicts])
  for fmt, v in verdicts.items():
    if v.get('top1_agreement_interval'):
      numbers = (f'top-1 agreement '
                 f'{intervals_lib.text(v["top1_agreement_interval"])}, '
                 'balanced accuracy drop '
                 f'{intervals_lib.text(v["balanced_accuracy_drop_interval"])}'
                 f', {v["bytes"] / 1024:.1f} KiB')
    elif v.get('top1_agreement') is not None:  # Recorded before intervals.
      numbers = (f'top-1 agreement {v["top1_agreement"]:.4f}, balanced '
                 f'accuracy drop {v["balanced_accuracy_drop"]:+.4f}, '
                 f'{v["bytes"] / 1024:.1f} KiB')
    else:
      numbers = 'not converted'
    status = 'PASSED' if v['passed'] else 'FAILED, not pushed'
    lines.append(f'  {fmt:<{width}}{status}: {numbers}')
    for reason in v.get('reasons') or []:
      lines.append(f'           why: {reason}')
  return lines


def mobile_verdicts(artifact: metadata_store_pb2.Artifact
                    ) -> Tuple[Optional[Dict[str, Dict]], Optional[str]]:
  """(verdicts, note) from a MobileModels artifact's custom properties."""
  if not _prop(artifact, 'exported'):
    return None, f'nothing exported ({_prop(artifact, "reason") or "?"})'
  return json.loads(_prop(artifact, 'verdicts')), None


def _store(metadata_path: str) -> mlmd.MetadataStore:
  if not os.path.exists(metadata_path):
    raise FileNotFoundError(f'no metadata store at {metadata_path}')
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = (
      metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
  return mlmd.MetadataStore(config)


def _outputs(store: mlmd.MetadataStore, execution_id: int
             ) -> Dict[str, List[metadata_store_pb2.Artifact]]:
  events = store.get_events_by_execution_ids([execution_id])
  by_key: Dict[str, List[int]] = {}
  for event in events:
    if event.type in (metadata_store_pb2.Event.OUTPUT,
                      metadata_store_pb2.Event.DECLARED_OUTPUT):
      key = next((s.key for s in event.path.steps if s.HasField('key')), '')
      by_key.setdefault(key, []).append(event.artifact_id)
  return {key: store.get_artifacts_by_id(ids) for key, ids in by_key.items()}


# Custom properties of an ML Metadata artifact (None when unset).
_prop = readers.artifact_property


def _summary_metric_name(key) -> str:
  """A MetricKey named as ``tfma.load_eval_result`` names it, aggregates
  shortened ('macro_auc'): '<name>_diff' for a change vs the baseline."""
  if key.is_diff:
    return f'{key.name}_diff'
  if key.HasField('aggregation_type'):
    return _plain_metric_name(f'{key.aggregation_type}_{key.name}')
  return key.name


def read_evaluation(evaluation_uri: str, labels: Sequence[str]):
  """(overall metrics, per-class recall, failed thresholds, has_baseline).

  From the run report's reader (components/run_report/readers.py): the
  candidate's overall slice, double values (NaN kept), the metrics of no
  model name included.
  """
  metrics: Dict[str, float] = {}
  recall: Dict[str, float] = {}
  has_baseline = False
  candidate, records = readers.metric_records(evaluation_uri)
  for slice_key, record in records:
    if slice_key != ():
      continue
    for key, number, kind in readers.candidate_values(
        record, candidate, model_independent=True):
      if kind != 'double_value':  # A bounded value: load_eval_result's dict.
        continue
      name = _summary_metric_name(key)
      if name.endswith('_diff'):
        has_baseline = True
      if key.sub_key.HasField('class_id'):
        if name == tfma_metrics.CLASS_RECALL_NAME:
          recall[labels[key.sub_key.class_id.value]] = number
      elif not (key.sub_key.HasField('top_k') or key.sub_key.HasField('k')):
        metrics[name] = number
  failures = []
  validation = readers.read_validation(evaluation_uri)
  for per_slice in validation.metric_validations_per_slice:
    for failure in per_slice.failures:
      failures.append(threshold_failure_text(failure, labels))
  if validation.missing_thresholds:
    failures.append('a threshold had no metric value to check (TFMA '
                    'missing_thresholds; see the validation result)')
  return metrics, recall, failures, has_baseline


def _plain_metric_name(name: str) -> str:
  """TFMA names aggregated metrics 'macro_average: true\n_auc': 'macro_auc'."""
  if '\n' not in name:
    return name
  prefix, base = name.rsplit('\n', 1)
  base = base.lstrip('_')
  if 'weighted_macro_average' in prefix:
    return 'weighted_macro_' + base
  if 'macro_average' in prefix:
    return 'macro_' + base
  if 'micro_average' in prefix:
    return 'micro_' + base
  return base


def threshold_failure_text(failure, labels: Sequence[str] = ()) -> str:
  """'<metric> = <value>, threshold <bound> (short by <x>)' of a failure."""
  key = failure.metric_key
  name = key.name
  if key.sub_key.HasField('class_id'):
    class_id = key.sub_key.class_id.value
    label = labels[class_id] if class_id < len(labels) else '?'
    name += f' [classId:{class_id} {label}]'
  if key.is_diff:
    name += ' (change vs baseline)'
  value = failure.metric_value.double_value.value
  text, miss = _threshold_text(failure.metric_threshold, value)
  by = f' (misses by {miss:.4f})' if miss is not None else ''
  return f'{name} = {value:.4f}, threshold {text}{by}'


def _threshold_text(threshold, value: Optional[float] = None):
  """(bound text, by how much value misses it or None)."""
  misses = []
  if threshold.HasField('value_threshold'):
    t = threshold.value_threshold
    parts = []
    if t.HasField('lower_bound'):
      parts.append(f'>= {t.lower_bound.value:.4f}')
      if value is not None and value < t.lower_bound.value:
        misses.append(t.lower_bound.value - value)
    if t.HasField('upper_bound'):
      parts.append(f'<= {t.upper_bound.value:.4f}')
      if value is not None and value > t.upper_bound.value:
        misses.append(value - t.upper_bound.value)
    return ' and '.join(parts), (max(misses) if misses else None)
  if threshold.HasField('change_threshold'):
    t = threshold.change_threshold
    miss = None
    if value is not None and t.HasField('absolute'):
      if readers.change_lower_is_better(t):
        miss = (value - t.absolute.value if value > t.absolute.value
                else None)
      elif value < t.absolute.value:
        miss = t.absolute.value - value
    return readers.change_threshold_text(t), miss
  return str(threshold), None


def latest_run(settings: configs.Settings) -> RunSummary:
  """The summary of the newest run of settings.pipeline_name."""
  store = _store(settings.metadata_path)
  runs = [c for c in store.get_contexts_by_type('pipeline_run')]
  pipelines = {c.id for c in store.get_contexts_by_type('pipeline')
               if c.name == settings.pipeline_name}
  if not runs or not pipelines:
    raise LookupError(f'no run of {settings.pipeline_name} in '
                      f'{settings.metadata_path}')
  run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
  executions = sorted(store.get_executions_by_context(run.id),
                      key=lambda e: (e.create_time_since_epoch, e.id))
  node_contexts = {c.id: c.name for c in store.get_contexts_by_type('node')}
  summary = RunSummary(run_id=run.name, components=[])
  labels = list(settings.labels)
  for execution in executions:
    node_id = _node_id(store, execution.id, node_contexts)
    seconds = (execution.last_update_time_since_epoch
               - execution.create_time_since_epoch) / 1000.0
    state = _STATE_NAMES.get(execution.last_known_state, '?')
    summary.components.append(ComponentRun(node_id, state, seconds))
    outputs = _outputs(store, execution.id)
    if 'blessing' in outputs and outputs['blessing']:
      blessing = outputs['blessing'][0]
      gate_report = readers.read_gate_report_file(blessing.uri)
      if gate_report is not None:  # The IntervalGate's.
        summary.gate_blessed = bool(_prop(blessing, 'blessed'))
        summary.gate_report = gate_report
        summary.intervals = readers.read_intervals(blessing.uri)
      else:  # The Evaluator's.
        summary.evaluator_blessed = bool(_prop(blessing, 'blessed'))
      summary.blessed = (summary.evaluator_blessed is not False
                         and summary.gate_blessed is not False)
    if 'evaluation' in outputs and outputs['evaluation']:
      (summary.metrics, summary.per_class_recall, summary.failed_thresholds,
       summary.has_baseline) = read_evaluation(
           outputs['evaluation'][0].uri, labels)
    if 'pushed_model' in outputs and outputs['pushed_model']:
      artifact = outputs['pushed_model'][0]
      if _prop(artifact, 'pushed'):
        summary.pushed_model = _prop(artifact, 'pushed_destination')
        summary.pushed_tflite = [
            os.path.join(summary.pushed_model, name)
            for name in json.loads(_prop(artifact, 'pushed_tflite') or '[]')]
        summary.manifest = _prop(artifact, 'manifest')
      else:
        summary.not_pushed_reason = _prop(artifact, 'not_pushed_reason')
    if 'mobile_models' in outputs and outputs['mobile_models']:
      summary.mobile_verdicts, summary.mobile_note = mobile_verdicts(
          outputs['mobile_models'][0])
    if 'report' in outputs and outputs['report']:
      summary.report = _prop(outputs['report'][0], 'report')
      summary.model_card = _prop(outputs['report'][0], 'model_card')
    if 'charts' in outputs and outputs['charts']:
      summary.charts_uri = outputs['charts'][0].uri
    if 'examples' in outputs and outputs['examples']:
      summary.examples_uri = outputs['examples'][0].uri
      recorded = _prop(outputs['examples'][0], 'labels')
      if recorded:  # The label list ingestion wrote (the one the model uses).
        labels = json.loads(recorded)
  return summary


def _node_id(store: mlmd.MetadataStore, execution_id: int,
             node_contexts: Dict[int, str]) -> str:
  """The component id: node contexts are named '<pipeline>.<node id>'."""
  for context in store.get_contexts_by_execution(execution_id):
    if context.id in node_contexts:
      return context.name.split('.', 1)[-1]
  return str(execution_id)
