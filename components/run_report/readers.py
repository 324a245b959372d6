"""Reading what a run produced: TFMA results, artifacts, the gate report.

The one reader of the Evaluator's TFMA output (metrics, plots, validation
result, EvalConfig thresholds) and of the artifacts the run report, the
pushed version's manifest (components/mobile_pusher.py) and the run summary
(pipeline/summary.py) show.
"""

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
from tfx import types

from components import interval_gate
from components import predictions as predictions_lib
from models import features

# Files the other components write (spelled here to keep this module free of
# their imports; tests check they agree).
INGESTION_REPORT_FILE = 'ingestion_report.json'
HISTORY_FILE = 'history.json'
MODEL_SUMMARY_FILE = 'model_summary.txt'
MOBILE_REPORT_FILE = 'mobile_export.json'
STATS_FILE = 'FeatureStats.pb'
ANOMALIES_FILE = 'SchemaDiff.pb'


def _read_json(path: str) -> Optional[Any]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _number(value) -> Optional[float]:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(number) else number


def _split_dirs(uri: str) -> Dict[str, str]:
  return {os.path.basename(d)[len('Split-'):]: d for d in
          sorted(tf.io.gfile.glob(os.path.join(uri, 'Split-*')))}


def feature_statistics(stats, name: str):
  """The feature's statistics in a DatasetFeatureStatisticsList; None when no
  example has a value for it (TFDV then lists no such feature: ages of a
  folder archive, say)."""
  for feature in stats.datasets[0].features:
    if feature.path.step and feature.path.step[-1] == name:
      return feature
  return None


def statistics_category_counts(stats, name: str) -> Dict[str, float]:
  """value -> count of a categorical feature (string or categorical int) in
  a DatasetFeatureStatisticsList; empty when no example has a value."""
  feature = feature_statistics(stats, name)
  if feature is None:
    return {}
  return {bucket.label: bucket.sample_count
          for bucket in feature.string_stats.rank_histogram.buckets}


def category_counts(statistics_uri: str, feature: str
                    ) -> Dict[str, Dict[str, float]]:
  """split -> value -> count of a string feature, from a Statistics
  artifact (a split whose statistics lack the feature is left out)."""
  import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
  out = {}
  for split, directory in _split_dirs(statistics_uri).items():
    path = os.path.join(directory, STATS_FILE)
    if not tf.io.gfile.exists(path):
      continue
    stats = tfdv.load_stats_binary(path)
    if feature_statistics(stats, feature) is not None:
      out[split] = statistics_category_counts(stats, feature)
  return out


def read_anomalies(anomalies_uri: str) -> Dict[str, List[Dict[str, str]]]:
  """split -> [{feature, severity, description}] from ExampleValidator."""
  from tensorflow_data_validation.utils import anomalies_util  # pylint: disable=g-import-not-at-top
  out = {}
  for split, directory in _split_dirs(anomalies_uri).items():
    path = os.path.join(directory, ANOMALIES_FILE)
    if not tf.io.gfile.exists(path):
      continue
    anomalies = anomalies_util.load_anomalies_binary(path)
    rows = []
    for name, info in sorted(anomalies.anomaly_info.items()):
      rows.append({'feature': name,
                   'severity': type(info).Severity.Name(info.severity),
                   'description': info.description or info.short_description})
    if anomalies.HasField('dataset_anomaly_info'):
      info = anomalies.dataset_anomaly_info
      rows.append({'feature': '(dataset)',
                   'severity': type(info).Severity.Name(info.severity),
                   'description': info.description or info.short_description})
    out[split] = rows
  return out


def _slice_key(proto) -> Tuple[Tuple[str, str], ...]:
  key = []
  for single in proto.single_slice_keys:
    which = single.WhichOneof('kind')
    value = getattr(single, which) if which else ''
    if isinstance(value, bytes):
      value = value.decode('utf-8', 'replace')
    key.append((single.column, str(value)))
  return tuple(key)


def _metric_name(key) -> Tuple[str, Optional[int]]:
  """(display name, class id or None) of a TFMA MetricKey."""
  name = key.name
  class_id = None
  if key.HasField('sub_key'):
    sub = key.sub_key
    if sub.HasField('class_id'):
      class_id = sub.class_id.value
    elif sub.HasField('top_k'):
      name = f'{name}@top{sub.top_k.value}'
    elif sub.HasField('k'):
      name = f'{name}@k{sub.k.value}'
  if key.is_diff:
    name += ' (change vs baseline)'
  return name, class_id


def _metric_value(value) -> Optional[float]:
  which = value.WhichOneof('type')
  if which == 'double_value':
    return value.double_value.value
  if which == 'bounded_value':
    return value.bounded_value.value.value
  return None


def _candidate(model_names: Sequence[str]) -> str:
  """The candidate's model name: 'candidate' when there is a baseline."""
  return 'candidate' if 'candidate' in model_names else ''


@dataclasses.dataclass
class Evaluation:
  """The candidate's TFMA results, keyed by slice."""
  # slice key -> metric name -> value (NaN kept as None).
  metrics: Dict[Tuple, Dict[str, Optional[float]]]
  # slice key -> class id -> metric name -> value.
  per_class: Dict[Tuple, Dict[int, Dict[str, Optional[float]]]]
  # Overall-slice plots: name -> the PlotData's oneof (proto), and per-class.
  plots: Dict[str, Any]
  class_plots: Dict[Tuple[str, int], Any]
  validation_ok: Optional[bool]
  failures: List[Dict[str, Any]]
  thresholds: List[Dict[str, Any]]

  @property
  def overall(self) -> Dict[str, Optional[float]]:
    return self.metrics.get((), {})


def metric_records(evaluation_uri: str) -> Tuple[str, List[Tuple[Tuple, Any]]]:
  """(the candidate's model name, [(slice key, MetricsForSlice)]).

  The Evaluator's metrics (``tfma.load_metrics``) by slice, cross-slice
  records left out.  The candidate is ``'candidate'`` when the Evaluator
  compared with a baseline, else the one unnamed model.
  """
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  records = list(tfma.load_metrics(evaluation_uri))
  names = {kv.key.model_name for r in records
           for kv in r.metric_keys_and_values}
  return _candidate(sorted(names)), [
      (_slice_key(r.slice_key), r) for r in records
      if not r.HasField('cross_slice_key')]


def candidate_values(record, candidate: str, model_independent: bool = False):
  """(MetricKey, value, kind) of one record's scalar metrics of the candidate.

  kind is the MetricValue's 'double_value' or 'bounded_value' (its point
  value); others (arrays, matrices) are left out.  NaN is kept.
  ``model_independent``: also the metrics of no model name, which
  ``tfma.load_eval_result`` adds to every model's.
  """
  for kv in record.metric_keys_and_values:
    name = kv.key.model_name
    if name != candidate and not (model_independent and name == ''):
      continue
    kind = kv.value.WhichOneof('type')
    if kind in ('double_value', 'bounded_value'):
      yield kv.key, _metric_value(kv.value), kind


def read_validation(evaluation_uri: str):
  """The Evaluator's ValidationResult (raises when it has none)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  return tfma.load_validation_result(evaluation_uri)


def read_evaluation(evaluation_uri: str) -> Evaluation:
  """The Evaluator's output for the candidate model (baseline's dropped)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  candidate, records = metric_records(evaluation_uri)
  metrics: Dict[Tuple, Dict[str, Optional[float]]] = {}
  per_class: Dict[Tuple, Dict[int, Dict[str, Optional[float]]]] = {}
  for key, record in records:
    for metric_key, value, _ in candidate_values(record, candidate):
      name, class_id = _metric_name(metric_key)
      value = _number(value)
      if class_id is None:
        metrics.setdefault(key, {})[name] = value
      else:
        per_class.setdefault(key, {}).setdefault(class_id, {})[name] = value
  plots: Dict[str, Any] = {}
  class_plots: Dict[Tuple[str, int], Any] = {}
  try:
    plot_records = list(tfma.load_plots(evaluation_uri))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('No TFMA plots: %s', e)
    plot_records = []
  for record in plot_records:
    if _slice_key(record.slice_key) != ():
      continue
    for kv in record.plot_keys_and_values:
      if kv.key.model_name != candidate:
        continue
      for field, data in kv.value.ListFields():  # PlotData has no oneof.
        if (kv.key.HasField('sub_key')
            and kv.key.sub_key.HasField('class_id')):
          class_plots[(field.name, kv.key.sub_key.class_id.value)] = data
        else:
          plots[field.name] = data
  validation_ok, failures = None, []
  try:
    validation = read_validation(evaluation_uri)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('No TFMA validation result: %s', e)
  else:
    validation_ok = bool(validation.validation_ok)
    for per_slice in validation.metric_validations_per_slice:
      for failure in per_slice.failures:
        name, class_id = _metric_name(failure.metric_key)
        failures.append({
            'slice': _slice_key(per_slice.slice_key),
            'metric': name, 'class_id': class_id,
            'value': _number(failure.metric_value.double_value.value),
            'threshold': threshold_text(failure.metric_threshold),
            'message': failure.message})
  return Evaluation(metrics, per_class, plots, class_plots, validation_ok,
                    failures, read_thresholds(evaluation_uri))


def threshold_text(threshold, kind: Optional[str] = None) -> str:
  """A MetricThreshold in words; kind 'value' or 'change' for one part."""
  parts = []
  if threshold.HasField('value_threshold') and kind in (None, 'value'):
    t = threshold.value_threshold
    if t.HasField('lower_bound'):
      parts.append(f'>= {t.lower_bound.value:.4g}')
    if t.HasField('upper_bound'):
      parts.append(f'<= {t.upper_bound.value:.4g}')
  if threshold.HasField('change_threshold') and kind in (None, 'change'):
    text = change_threshold_text(threshold.change_threshold)
    if text:
      parts.append(text)
  return ' and '.join(parts) or 'configured'


def change_lower_is_better(t) -> bool:
  """Whether a GenericChangeThreshold passes on a change at most its bound.

  Its direction (TFMA checks ``diff <= absolute`` for LOWER_IS_BETTER,
  ``>=`` for HIGHER_IS_BETTER); unset, a positive bound is read as an upper
  one.
  """
  directions = t.DESCRIPTOR.fields_by_name['direction'].enum_type
  if t.direction == directions.values_by_name['LOWER_IS_BETTER'].number:
    return True
  if t.direction == directions.values_by_name['HIGHER_IS_BETTER'].number:
    return False
  return t.HasField('absolute') and t.absolute.value > 0


def change_threshold_text(t) -> str:
  """A GenericChangeThreshold in words: the report's, the manifest's and the
  run summary's one wording ('' when it has no bound)."""
  parts = []
  if t.HasField('absolute'):
    parts.append(f'change vs baseline '
                 f'{"<=" if change_lower_is_better(t) else ">="} '
                 f'{t.absolute.value:+.4g}')
  if t.HasField('relative'):
    parts.append(f'relative change vs baseline {t.relative.value:+.4g}')
  return ' and '.join(parts)


def _threshold_rows(metric: str, slices: str, threshold) -> List[Dict]:
  return [{'metric': metric, 'slices': slices, 'kind': kind,
           'threshold': threshold_text(threshold, kind)}
          for kind, field in (('value', 'value_threshold'),
                              ('change', 'change_threshold'))
          if threshold.HasField(field)]


def _slicing_text(specs) -> str:
  if not specs:
    return 'overall'
  texts = []
  for spec in specs:
    keys = list(spec.feature_keys) + [f'{k}={v}' for k, v in
                                      spec.feature_values.items()]
    texts.append(' x '.join(keys) or 'overall')
  return ', '.join(texts)


def read_thresholds(evaluation_uri: str) -> List[Dict[str, Any]]:
  """[{metric, slices, threshold}] from the Evaluator's EvalConfig."""
  from tensorflow_model_analysis.writers import eval_config_writer  # pylint: disable=g-import-not-at-top
  try:
    config = eval_config_writer.load_eval_run(evaluation_uri)[0]
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('No EvalConfig in %s: %s', evaluation_uri, e)
    return []
  if config is None:  # No eval_config file (load_eval_run returns None).
    logging.warning('No EvalConfig in %s', evaluation_uri)
    return []
  out = []
  for spec in config.metrics_specs:
    for metric in spec.metrics:
      name = json.loads(metric.config).get('name') if metric.config else None
      name = name or metric.class_name
      if metric.HasField('threshold'):
        out += _threshold_rows(name, 'overall', metric.threshold)
      for per_slice in metric.per_slice_thresholds:
        out += _threshold_rows(name, _slicing_text(per_slice.slicing_specs),
                               per_slice.threshold)
    for name, threshold in spec.thresholds.items():
      out += _threshold_rows(name, 'overall', threshold)
    for name, per_slice in spec.per_slice_thresholds.items():
      for one in per_slice.thresholds:
        out += _threshold_rows(name, _slicing_text(one.slicing_specs),
                               one.threshold)
  return out


# The SavedModel's answers on the test split (components/predictions.py).
Predictions = predictions_lib.Predictions
predict_split = predictions_lib.predict_split


def read_gate_report_file(blessing_uri: str) -> Optional[Dict[str, Any]]:
  """gate_report.json at a blessing's URI (None: not the IntervalGate's)."""
  return _read_json(os.path.join(blessing_uri, interval_gate.GATE_REPORT_FILE))


def read_intervals(blessing_uri: str) -> Optional[Dict[str, Any]]:
  """The IntervalGate's intervals.json (None when absent)."""
  return _read_json(os.path.join(blessing_uri, interval_gate.INTERVALS_FILE))


def read_gate_report(gate_blessing: Optional[types.Artifact]
                     ) -> Optional[Dict[str, Any]]:
  """The IntervalGate's gate_report.json (None when no gate is wired)."""
  if gate_blessing is None:
    return None
  name = interval_gate.GATE_REPORT_FILE
  report = read_gate_report_file(gate_blessing.uri)
  if report is None:
    report = {'gates': [], 'blessed': _blessed(gate_blessing),
              'note': f'{name} missing in {gate_blessing.uri}'}
  report.setdefault('blessed', _blessed(gate_blessing))
  return report


def read_ingestion_report(examples_uri: str) -> Optional[Dict[str, Any]]:
  """ImageExampleGen's ingestion_report.json (None when absent)."""
  return _read_json(os.path.join(examples_uri, INGESTION_REPORT_FILE))


def _blessed(blessing: types.Artifact) -> Optional[bool]:
  if blessing.has_custom_property('blessed'):
    return bool(blessing.get_int_custom_property('blessed'))
  if tf.io.gfile.exists(os.path.join(blessing.uri, 'BLESSED')):
    return True
  if tf.io.gfile.exists(os.path.join(blessing.uri, 'NOT_BLESSED')):
    return False
  return None


def artifact_property(artifact, name: str):
  """A custom property's value, None when unset.

  ``artifact``: a TFX Artifact, an ML Metadata Artifact proto (what
  pipeline/summary.py reads from the store) or None.
  """
  if artifact is None:
    return None
  if not isinstance(artifact, types.Artifact):  # metadata_store_pb2.Artifact
    value = artifact.custom_properties.get(name)
    if value is None:
      return None
    which = value.WhichOneof('value')
    return getattr(value, which) if which else None
  if not artifact.has_custom_property(name):
    return None
  return artifact.get_custom_property(name)


_artifact_property = artifact_property
