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
from models import explain
from models import features
from models import preprocessing

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


def category_counts(statistics_uri: str, feature: str
                    ) -> Dict[str, Dict[str, float]]:
  """split -> value -> count of a string feature, from TFDV statistics."""
  import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
  out = {}
  for split, directory in _split_dirs(statistics_uri).items():
    path = os.path.join(directory, STATS_FILE)
    if not tf.io.gfile.exists(path):
      continue
    stats = tfdv.load_stats_binary(path)
    for f in stats.datasets[0].features:
      if f.path.step and f.path.step[-1] == feature:
        out[split] = {b.label: b.sample_count
                      for b in f.string_stats.rank_histogram.buckets}
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


def read_evaluation(evaluation_uri: str) -> Evaluation:
  """The Evaluator's output for the candidate model (baseline's dropped)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  records = list(tfma.load_metrics(evaluation_uri))
  names = {kv.key.model_name for r in records
           for kv in r.metric_keys_and_values}
  candidate = _candidate(sorted(names))
  metrics: Dict[Tuple, Dict[str, Optional[float]]] = {}
  per_class: Dict[Tuple, Dict[int, Dict[str, Optional[float]]]] = {}
  for record in records:
    if record.HasField('cross_slice_key'):
      continue
    key = _slice_key(record.slice_key)
    for kv in record.metric_keys_and_values:
      if kv.key.model_name != candidate:
        continue
      value = _metric_value(kv.value)
      if value is None and kv.value.WhichOneof('type') != 'double_value':
        continue
      name, class_id = _metric_name(kv.key)
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
    validation = tfma.load_validation_result(evaluation_uri)
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
    t = threshold.change_threshold
    if t.HasField('absolute'):
      parts.append(f'change vs baseline >= {t.absolute.value:+.4g}'
                   if t.absolute.value <= 0 else
                   f'change vs baseline <= {t.absolute.value:+.4g}')
    if t.HasField('relative'):
      parts.append(f'relative change vs baseline {t.relative.value:+.4g}')
  return ' and '.join(parts) or 'configured'


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


def gradcam_signature_answers(loaded, jpegs: Sequence[bytes]):
  """((images, probabilities, heatmaps), None) from the SavedModel's
  serving_gradcam signature, or (None, the reason it has none)."""
  if explain.GRADCAM_SIGNATURE not in loaded.signatures:
    return None, (f'the SavedModel has no {explain.GRADCAM_SIGNATURE} '
                  'signature (see models/export.py: a model with several '
                  'inputs or without a feature_map layer)')
  signature = loaded.signatures[explain.GRADCAM_SIGNATURE]
  spec = signature.structured_input_signature[1]['images']
  size = int(spec.shape[1])
  images = preprocessing.decode_batch(tf.constant(list(jpegs)), size)
  answer = signature(images=images)
  return (images.numpy(), answer[features.PREDICTION_KEY].numpy(),
          answer[explain.HEATMAP_KEY].numpy()), None


def read_gate_report(gate_blessing: Optional[types.Artifact]
                     ) -> Optional[Dict[str, Any]]:
  """The IntervalGate's gate_report.json (None when no gate is wired)."""
  if gate_blessing is None:
    return None
  name = interval_gate.GATE_REPORT_FILE
  report = _read_json(os.path.join(gate_blessing.uri, name))
  if report is None:
    report = {'gates': [], 'blessed': _blessed(gate_blessing),
              'note': f'{name} missing in {gate_blessing.uri}'}
  report.setdefault('blessed', _blessed(gate_blessing))
  return report


def _blessed(blessing: types.Artifact) -> Optional[bool]:
  if blessing.has_custom_property('blessed'):
    return bool(blessing.get_int_custom_property('blessed'))
  if tf.io.gfile.exists(os.path.join(blessing.uri, 'BLESSED')):
    return True
  if tf.io.gfile.exists(os.path.join(blessing.uri, 'NOT_BLESSED')):
    return False
  return None


def _artifact_property(artifact: Optional[types.Artifact], name: str):
  if artifact is None or not artifact.has_custom_property(name):
    return None
  return artifact.get_custom_property(name)
