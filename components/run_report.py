"""RunReporter: one static HTML report and a model card per run.

The last node of the pipeline.  It reads what the run produced and writes a
``RunReport`` artifact holding:

* ``report.html``: one self-contained page (images embedded as base64 PNG,
  inline CSS, no script, nothing fetched) with a ``<section>`` each for the
  data, training, evaluation, slices and fairness, explanations (Grad-CAM),
  the blessing decision and the pushed artifacts;
* ``model_card.md`` and ``model_card.html``: the model card (own jinja2
  templates: model-card-toolkit 2.0.0 requires TFMA < 0.42 and absl-py < 1.1
  and does not install with this pinned stack);
* ``report.json``: the numbers both show.

Where the numbers come from:

* metric tables, slices and the confusion matrix: the Evaluator's TFMA
  output (``tfma.load_metrics`` / ``tfma.load_plots``), for the candidate
  model only.  Every scalar metric present is shown, so metrics added to the
  EvalConfig appear without a change here;
* ROC curves and the reliability plot: TFMA's plots when the EvalConfig asks
  for them (per-class ``ConfusionMatrixPlot``, ``CalibrationPlot``); else
  they are computed here from the same SavedModel's predictions on the same
  split TFMA evaluated (``serving_default``), and the report says which;
* Grad-CAM: the SavedModel's own ``serving_gradcam`` signature
  (``models/explain.py``), on test images, correct and wrong per class;
* 95% intervals (overall, per class, per group) and the subgroup and
  regression gates: the IntervalGate's ``ModelBlessing``, whose URI holds
  ``intervals.json`` and ``gate_report.json`` (components/interval_gate.py);
  report.json gives each interval as ``{"value", "lower", "upper"}``;
* blessing: the Evaluator's ``ModelBlessing`` and TFMA validation result,
  and the IntervalGate's.

It runs whether or not the model was blessed or pushed, and says which: the
pusher's and exporter's outputs are optional inputs (a run whose pusher was
skipped still gets its report; LocalDagRunner runs a node whose optional
inputs resolve to nothing).
"""

import base64
import dataclasses
import datetime
import io
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import jinja2
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position
from tfx import types  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.annotations import InputArtifact  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.annotations import OutputArtifact  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.annotations import Parameter  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.decorators import component  # pylint: disable=wrong-import-position
from tfx.types import artifact_utils  # pylint: disable=wrong-import-position
from tfx.types import standard_artifacts  # pylint: disable=wrong-import-position

from components.data_report import DataCharts  # pylint: disable=wrong-import-position
from components.mobile_exporter import MobileModels  # pylint: disable=wrong-import-position
from components import intervals as intervals_lib  # pylint: disable=wrong-import-position
from components import interval_gate  # pylint: disable=wrong-import-position
from components import predictions as predictions_lib  # pylint: disable=wrong-import-position
from models import explain  # pylint: disable=wrong-import-position
from models import features  # pylint: disable=wrong-import-position
from models import preprocessing  # pylint: disable=wrong-import-position

REPORT_FILE = 'report.html'
MODEL_CARD_MD = 'model_card.md'
MODEL_CARD_HTML = 'model_card.html'
DATA_FILE = 'report.json'
SECTIONS = ('data', 'training', 'evaluation', 'slices', 'explanations',
            'blessing', 'pushed')
# The melanoma class of the HAM10000 labels; the pipeline passes the run's
# (Settings.melanoma_class, '' when the label list has none).
DEFAULT_MELANOMA = 'mel'


def _melanoma(labels: Sequence[str], melanoma: str = DEFAULT_MELANOMA
              ) -> Optional[str]:
  """The class reports put first and call melanoma (None: none)."""
  return melanoma if melanoma and melanoma in labels else None
# Files the other components write (spelled here to keep this module free of
# their imports; tests check they agree).
INGESTION_REPORT_FILE = 'ingestion_report.json'
HISTORY_FILE = 'history.json'
MODEL_SUMMARY_FILE = 'model_summary.txt'
MOBILE_REPORT_FILE = 'mobile_export.json'
STATS_FILE = 'FeatureStats.pb'
ANOMALIES_FILE = 'SchemaDiff.pb'
RELIABILITY_BINS = 10


class RunReport(types.Artifact):
  """report.html, model_card.md / .html and report.json of one run.

  Custom properties: ``blessed`` and ``pushed`` (0/1), ``report`` (path of
  report.html), ``model_card`` (path of model_card.md).
  """
  TYPE_NAME = 'components.RunReport'


# --------------------------------------------------------------------------
# Reading the run's artifacts.


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


def pick_gradcam_examples(labels: np.ndarray, probabilities: np.ndarray,
                          num_classes: int, per_cell: int
                          ) -> Dict[int, Dict[str, List[int]]]:
  """class -> {'correct': [indices], 'wrong': [indices]}, most confident first.

  'wrong' are that class's examples predicted as another class.
  """
  predicted = probabilities.argmax(1)
  confidence = probabilities.max(1)
  out = {}
  for c in range(num_classes):
    mine = np.flatnonzero(labels == c)
    order = mine[np.argsort(-confidence[mine], kind='stable')]
    out[c] = {'correct': [int(i) for i in order if predicted[i] == c
                          ][:per_cell],
              'wrong': [int(i) for i in order if predicted[i] != c
                        ][:per_cell]}
  return out


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


# --------------------------------------------------------------------------
# Charts: matplotlib figures as base64 PNG data URIs.


def _png(fig) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  plt.close(fig)
  return 'data:image/png;base64,' + base64.b64encode(
      buffer.getvalue()).decode('ascii')


def png_file_uri(path: str) -> str:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return 'data:image/png;base64,' + base64.b64encode(f.read()).decode(
        'ascii')


def training_curves(history: Dict[str, List[float]]) -> List[Dict[str, str]]:
  """One chart for the loss and one for the accuracy metrics, per epoch."""
  charts = []
  groups = (('Loss', [k for k in history if k.endswith('loss')]),
            ('Accuracy', [k for k in history if 'accuracy' in k]))
  for title, keys in groups:
    if not keys:
      continue
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key in sorted(keys):
      # Metrics first seen in a later training phase are null before it.
      values = [np.nan if v is None else v for v in history[key]]
      ax.plot(range(1, len(values) + 1), values, marker='o', markersize=3,
              label=key, linestyle='--' if key.startswith('val_') else '-')
    ax.set_xlabel('epoch')
    ax.set_title(f'{title} per epoch (val_ = eval split)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    charts.append({'title': f'{title} per epoch', 'src': _png(fig)})
  return charts


def confusion_chart(matrix: np.ndarray, labels: Sequence[str]) -> str:
  """Row-normalized (recall) colours, counts written in the cells."""
  rows = matrix.sum(1, keepdims=True)
  normalized = np.divide(matrix, rows, out=np.zeros_like(matrix, float),
                         where=rows > 0)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels),
                                  0.8 + 0.6 * len(labels)))
  image = ax.imshow(normalized, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=40, ha='right')
  ax.set_yticks(range(len(labels)))
  ax.set_yticklabels(labels)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(j, i, f'{int(matrix[i, j])}', ha='center', va='center',
              fontsize=8, color='white' if normalized[i, j] > 0.5 else 'black')
  fig.colorbar(image, ax=ax, label='fraction of the true class')
  ax.set_title('Confusion matrix (rows normalized)')
  fig.tight_layout()
  return _png(fig)


def roc_chart(curves: Dict[str, Tuple[np.ndarray, np.ndarray, Optional[float]]],
              melanoma: Optional[str] = None) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for name, (fpr, tpr, auc) in curves.items():
    label = name if auc is None else f'{name} (AUC {auc:.3f})'
    ax.plot(fpr, tpr, label=label,
            linewidth=2.5 if name == melanoma else 1.2)
  ax.plot([0, 1], [0, 1], color='grey', linestyle=':', linewidth=1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate (recall)')
  ax.set_title('ROC, one class vs the rest')
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  return _png(fig)


def reliability_chart(confidence: np.ndarray, accuracy: np.ndarray,
                      counts: np.ndarray, title: str) -> str:
  fig, ax = plt.subplots(figsize=(5, 4.2))
  keep = counts > 0
  width = 1.0 / max(len(counts), 1)
  centers = (np.arange(len(counts)) + 0.5) * width
  ax.bar(centers[keep], accuracy[keep], width=width * 0.9, alpha=0.7,
         label='observed')
  ax.plot(confidence[keep], accuracy[keep], 'o', color='black', markersize=3,
          label='bin mean confidence')
  ax.plot([0, 1], [0, 1], color='grey', linestyle=':', label='perfect')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('predicted probability')
  ax.set_ylabel('observed frequency')
  ax.set_title(title)
  ax.legend(fontsize=8, loc='upper left')
  fig.tight_layout()
  return _png(fig)


def gradcam_grid(images: np.ndarray, heatmaps: np.ndarray,
                 cells: Dict[int, Dict[str, List[int]]],
                 positions: Dict[int, int], labels: Sequence[str],
                 probabilities: np.ndarray, per_cell: int) -> str:
  """Rows: true class; columns: correct examples, then wrong ones."""
  columns = 2 * per_cell
  rows = [c for c in cells if cells[c]['correct'] or cells[c]['wrong']]
  fig, axes = plt.subplots(len(rows), columns,
                           figsize=(max(5.0, 1.8 * columns), 1.9 * len(rows)),
                           squeeze=False)
  for r, c in enumerate(rows):
    picks = ([('correct', i) for i in cells[c]['correct']]
             + [None] * (per_cell - len(cells[c]['correct']))
             + [('wrong', i) for i in cells[c]['wrong']]
             + [None] * (per_cell - len(cells[c]['wrong'])))
    for k, pick in enumerate(picks):
      ax = axes[r][k]
      ax.set_xticks([])
      ax.set_yticks([])
      if k == 0:
        ax.set_ylabel(f'true {labels[c]}', fontsize=9)
      if pick is None:
        ax.text(0.5, 0.5, 'none', ha='center', va='center', fontsize=8,
                color='grey', transform=ax.transAxes)
        continue
      kind, index = pick
      j = positions[index]
      image = images[j]
      ax.imshow(explain.overlay(image, heatmaps[j]))
      predicted = int(probabilities[index].argmax())
      ax.set_title(f'{kind}: {labels[predicted]} '
                   f'{probabilities[index, predicted]:.2f}', fontsize=8,
                   color='darkgreen' if kind == 'correct' else 'darkred')
  fig.suptitle('Grad-CAM of the predicted class (red = most evidence)',
               fontsize=10)
  fig.tight_layout()
  return _png(fig)


# --------------------------------------------------------------------------
# Deriving the report's numbers.


def confusion_from_tfma(plot, num_classes: int) -> Optional[np.ndarray]:
  """The matrix of a multi_class_confusion_matrix_at_thresholds plot."""
  if plot is None or not plot.matrices:
    return None
  matrix = np.zeros((num_classes, num_classes))
  for entry in plot.matrices[0].entries:
    if (0 <= entry.actual_class_id < num_classes
        and 0 <= entry.predicted_class_id < num_classes):
      matrix[entry.actual_class_id, entry.predicted_class_id] += (
          entry.num_weighted_examples)
  return matrix


def roc_from_tfma(class_plots, labels) -> Dict[str, Tuple]:
  """Per-class ROC from TFMA's per-class confusion_matrix_at_thresholds."""
  curves = {}
  for c, name in enumerate(labels):
    plot = class_plots.get(('confusion_matrix_at_thresholds', c))
    if plot is None or not plot.matrices:
      continue
    fpr, tpr = [], []
    for m in plot.matrices:
      negatives = m.false_positives + m.true_negatives
      positives = m.true_positives + m.false_negatives
      fpr.append(m.false_positives / negatives if negatives else 0.0)
      tpr.append(m.true_positives / positives if positives else 0.0)
    order = np.argsort(fpr, kind='stable')
    fpr = np.array(fpr)[order]
    tpr = np.array(tpr)[order]
    curves[name] = (fpr, tpr, float(np.trapz(tpr, fpr)) if len(fpr) > 1
                    else None)
  return curves


def roc_from_predictions(predictions: Predictions, labels
                         ) -> Dict[str, Tuple]:
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  curves = {}
  for c, name in enumerate(labels):
    truth = predictions.labels == c
    if truth.all() or not truth.any():
      continue  # One-vs-rest needs both kinds of example.
    fpr, tpr, _ = sk_metrics.roc_curve(truth, predictions.probabilities[:, c])
    curves[name] = (fpr, tpr, float(sk_metrics.auc(fpr, tpr)))
  return curves


def reliability_from_predictions(predictions: Predictions,
                                 bins: int = RELIABILITY_BINS):
  """Top-1 confidence vs accuracy per bin, and the expected calibration error."""
  confidence = predictions.probabilities.max(1)
  correct = predictions.probabilities.argmax(1) == predictions.labels
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
  counts = np.bincount(which, minlength=bins).astype(float)
  mean_conf = np.bincount(which, confidence, bins) / np.maximum(counts, 1)
  accuracy = np.bincount(which, correct.astype(float), bins) / np.maximum(
      counts, 1)
  ece = float(np.sum(counts / counts.sum() * np.abs(accuracy - mean_conf)))
  return mean_conf, accuracy, counts, ece


def reliability_from_tfma(plot):
  """(mean prediction, observed frequency, counts) of a calibration plot."""
  if plot is None or not plot.buckets:
    return None
  buckets = [b for b in plot.buckets if b.num_weighted_examples.value > 0]
  if not buckets:
    return None
  counts = np.array([b.num_weighted_examples.value for b in buckets])
  prediction = np.array([b.total_weighted_refined_prediction.value
                         for b in buckets]) / counts
  observed = np.array([b.total_weighted_label.value for b in buckets]) / counts
  bins = RELIABILITY_BINS
  which = np.clip((prediction * bins).astype(int), 0, bins - 1)
  out_counts = np.bincount(which, counts, bins)
  out_pred = np.bincount(which, prediction * counts, bins) / np.maximum(
      out_counts, 1e-12)
  out_obs = np.bincount(which, observed * counts, bins) / np.maximum(
      out_counts, 1e-12)
  return out_pred, out_obs, out_counts


def _family(columns: Sequence[str]) -> frozenset:
  return frozenset(columns)


def _family_of_gate(name: str) -> frozenset:
  tokens = [t for t in re.split(r'[^A-Za-z0-9_]+', name or '') if t]
  return frozenset(t for t in tokens if t.lower() not in ('x', 'by', 'and'))


def slice_tables(evaluation: Evaluation, labels: Sequence[str],
                 gates: Sequence[Dict[str, Any]],
                 intervals: Optional[Dict[str, Any]] = None,
                 melanoma: str = DEFAULT_MELANOMA) -> List[Dict[str, Any]]:
  """One table per slice family: groups, counts, metrics, spread, gate marks.

  Columns: every scalar metric the slices have, plus each class's recall
  when per-class recall is present (melanoma first), plus the group's
  balanced accuracy with its 95% interval (``intervals``: intervals.json)
  for single-feature families.  The spread of a metric is max - min over
  the family's groups (descriptive; no gate uses it).  A gate that failed
  on a family marks the groups it names.
  """
  by_group = {(e['feature'], e['group']): e['metrics']
              for e in (intervals or {}).get('slices', [])}
  melanoma = _melanoma(labels, melanoma)
  mel = labels.index(melanoma) if melanoma else None
  families: Dict[Tuple[str, ...], List[Tuple]] = {}
  for key in evaluation.metrics:
    if key == ():
      continue
    families.setdefault(tuple(c for c, _ in key), []).append(key)
  tables = []
  for columns, keys in sorted(families.items()):
    metric_names = sorted({m for k in keys for m in evaluation.metrics[k]
                           if '(change' not in m})
    if 'example_count' in metric_names:
      metric_names.remove('example_count')
      metric_names.insert(0, 'example_count')
    recall_name = None
    if mel is not None:
      for k in keys:
        for name in evaluation.per_class.get(k, {}).get(mel, {}):
          if 'recall' in name and '(change' not in name:
            recall_name = name
            break
    columns_shown = list(metric_names)
    if recall_name:
      columns_shown.append(f'{melanoma} {recall_name}')
    rows = []
    for k in sorted(keys, key=lambda k: tuple(v for _, v in k)):
      group = ' x '.join(_group_name(c, v, labels) for c, v in k)
      values = [_count_or_value(m, evaluation.metrics[k].get(m))
                for m in metric_names]
      if recall_name:
        values.append(evaluation.per_class.get(k, {}).get(mel, {}).get(
            recall_name))
      found = by_group.get(k[0]) if len(k) == 1 else None
      rows.append({'group': group, 'values': values, 'raw': k,
                   'failed': False,
                   'interval': (intervals_lib.text(found['balanced_accuracy'])
                                if found else None)})
    gaps = []
    for i, name in enumerate(columns_shown):
      present = [r['values'][i] for r in rows if r['values'][i] is not None]
      gaps.append(max(present) - min(present)
                  if len(present) > 1 and name != 'example_count' else None)
    family_gates = [g for g in gates if _family_of_gate(
        g.get('slice_family', '')) == _family(columns)]
    for row in rows:
      named = {str(n) for g in family_gates for n in g.get('failed_groups')
               or []}
      if row['group'] in named or any(v in named for _, v in row['raw']):
        row['failed'] = True
    for failure in evaluation.failures:
      for row in rows:
        if failure['slice'] == row['raw']:
          row['failed'] = True
    tables.append({
        'family': ' x '.join(columns),
        'columns': columns_shown,
        'failed_columns': [False] * len(columns_shown),
        'has_intervals': any(r['interval'] for r in rows),
        'rows': rows, 'gaps': gaps, 'gates': family_gates,
        'failed': any(not g.get('passed', True) for g in family_gates)
                  or any(r['failed'] for r in rows)})
  return tables


def _count_or_value(name: str, value):
  if name == 'example_count' and value is not None:
    return int(value)
  return value


def _group_name(column: str, value: str, labels: Sequence[str]) -> str:
  if column == features.LABEL_KEY:
    try:
      return labels[int(value)]
    except (ValueError, IndexError):
      return value
  return value


def per_class_table(evaluation: Evaluation, labels: Sequence[str],
                    predictions: Optional[Predictions],
                    melanoma: str = DEFAULT_MELANOMA):
  """(columns, rows) of the overall slice's per-class metrics, plus support."""
  overall = evaluation.per_class.get((), {})
  names = sorted({n for c in overall.values() for n in c
                  if '(change' not in n})
  columns = ['examples'] + names
  rows = []
  order = list(range(len(labels)))
  melanoma = _melanoma(labels, melanoma)
  if melanoma:  # Melanoma first.
    order.remove(labels.index(melanoma))
    order.insert(0, labels.index(melanoma))
  for c in order:
    support = (int((predictions.labels == c).sum()) if predictions is not None
               else None)
    label_slice = evaluation.metrics.get(((features.LABEL_KEY, str(c)),), {})
    if label_slice.get('example_count') is not None:
      support = int(label_slice['example_count'])
    rows.append({'label': labels[c],
                 'values': [support] + [overall.get(c, {}).get(n)
                                        for n in names]})
  return columns, rows


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


def interval_rows(intervals: Optional[Dict[str, Any]], labels: Sequence[str],
                  melanoma: str = DEFAULT_MELANOMA):
  """(headline rows, per-class rows) of intervals.json, formatted
  ``0.612 [0.571, 0.650]``; melanoma first among the classes."""
  if not intervals:
    return [], []
  metrics = intervals['overall']['metrics']
  headline = [(title, intervals_lib.text(metrics[key]))
              for key, title in interval_gate.HEADLINE_METRICS
              if key in metrics]
  order = list(labels)
  melanoma = _melanoma(labels, melanoma)
  if melanoma:
    order.remove(melanoma)
    order.insert(0, melanoma)
  per_class = [(name, intervals_lib.text(metrics.get(f'recall/{name}')),
                intervals_lib.text(metrics.get(f'precision/{name}')))
               for name in order]
  return headline, per_class


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


# --------------------------------------------------------------------------
# Templates.

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
nav{background:#fff;border-bottom:1px solid #dde;padding:8px 28px}
nav a{margin-right:14px;color:#2450a6;text-decoration:none;font-size:14px}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde;border-radius:6px;
margin:18px 0;padding:6px 20px 16px}
h2{border-bottom:1px solid #eee;padding-bottom:6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #dde;padding:4px 8px;text-align:right}
th{background:#eef1f6}
td.l,th.l{text-align:left}
tr.failed td,td.failed,th.failed{background:#fde2e1}
tr.gap td{font-weight:bold;background:#f7f7f2}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;
font-weight:bold;font-size:13px}
.ok{background:#d8f3dc;color:#1b5e20}.bad{background:#fde2e1;color:#b71c1c}
.muted{color:#666;font-size:13px}
img{max-width:100%;border:1px solid #eee;margin:6px 6px 6px 0}
figure{display:inline-block;margin:0 12px 12px 0;vertical-align:top}
figcaption{font-size:12px;color:#555}
pre{background:#f3f3f3;padding:8px;overflow-x:auto;font-size:12px}
"""

_REPORT_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run report: {{ r.pipeline_name }}</title>
<style>{{ css }}</style></head>
<body>
<header><h1>Run report: {{ r.pipeline_name }}</h1>
<div>Generated {{ r.generated }} &middot; model {{ r.model_uri }}</div>
<div style="margin-top:6px">
{% if r.blessing.blessed %}<span class="badge ok">BLESSED</span>
{% else %}<span class="badge bad">NOT BLESSED</span>{% endif %}
{% if r.pushed.pushed %}<span class="badge ok">PUSHED version {{ r.pushed.version }}</span>
{% else %}<span class="badge bad">NOT PUSHED</span>{% endif %}
</div></header>
<nav>{% for s in sections %}<a href="#{{ s }}">{{ titles[s] }}</a>{% endfor %}
<a href="{{ model_card }}">Model card</a></nav>
<main>

<section id="data"><h2>Data</h2>
{% set ing = r.data.ingestion %}
{% if ing %}
<p>Ingested {{ ing.examples }} of {{ ing.input_records }} inputs
(layout <b>{{ ing.layout }}</b>); quarantined {{ ing.quarantined }}
({{ '%.1f' % (100 * ing.quarantined_fraction) }}%).</p>
<table><tr><th class="l">class</th>{% for s in ing.examples_per_split %}<th>{{ s }}</th>{% endfor %}</tr>
{% for name in ing.labels %}<tr><td class="l">{{ name }}</td>
{% for s in ing.examples_per_split %}<td>{{ ing.examples_per_split_and_class[s][name] }}</td>{% endfor %}</tr>{% endfor %}
<tr class="gap"><td class="l">total</td>{% for s, n in ing.examples_per_split.items() %}<td>{{ n }}</td>{% endfor %}</tr>
<tr><td class="l">lesions</td>{% for s in ing.examples_per_split %}<td>{{ ing.lesions_per_split[s] }}</td>{% endfor %}</tr>
</table>
<h3>Quarantine</h3>
{% if ing.quarantined_by_reason %}<table><tr><th class="l">reason</th><th>images</th></tr>
{% for k, v in ing.quarantined_by_reason.items() %}<tr><td class="l">{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>No image was quarantined.</p>{% endif %}
<p class="muted">List: {{ ing.quarantine_file }}</p>
{% else %}<p>No ingestion report in the Examples artifact.</p>{% endif %}
{% if r.data.sources %}<h3>Acquisition sources</h3>
<table><tr><th class="l">source</th>{% for s in r.data.sources %}<th>{{ s }}</th>{% endfor %}</tr>
{% for v in r.data.source_values %}<tr><td class="l">{{ v }}</td>{% for s in r.data.sources %}<td>{{ '%d' % r.data.sources[s].get(v, 0) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}
<h3>Exploratory charts</h3>
{% for c in charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% else %}<p>No charts.</p>{% endfor %}
<h3>TFDV anomalies (ExampleValidator vs the curated schema)</h3>
{% if r.data.anomalies is none %}<p>No anomalies artifact.</p>
{% else %}<table><tr><th class="l">split</th><th class="l">feature</th><th class="l">severity</th><th class="l">description</th></tr>
{% for split, rows in r.data.anomalies.items() %}{% for a in rows %}
<tr class="failed"><td class="l">{{ split }}</td><td class="l">{{ a.feature }}</td><td class="l">{{ a.severity }}</td><td class="l">{{ a.description }}</td></tr>
{% else %}<tr><td class="l">{{ split }}</td><td class="l" colspan="3">no anomaly</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
</section>

<section id="training"><h2>Training</h2>
{% if r.training.history %}
<p>{{ r.training.epochs }} epochs; model <b>{{ r.training.config.get('model', '?') }}</b>,
image size {{ r.training.config.get('image_size', '?') }},
batch {{ r.training.config.get('batch_size', '?') }},
learning rate {{ r.training.config.get('learning_rate', '?') }}.</p>
{% set cal = r.training.get('calibration') %}
{% if cal and cal.get('method') == 'temperature' %}<p>Probability calibration: temperature scaling fitted on {{ cal.examples }} eval-split images,
T = {{ fmt(cal.fitted_temperature) }} (negative log-likelihood {{ fmt(cal.nll_before) }} &rarr; {{ fmt(cal.nll_after) }},
expected calibration error {{ fmt(cal.ece_before) }} &rarr; {{ fmt(cal.ece_after) }}):
{% if cal.applied %}applied in every exported signature; the evaluation below measures it on the test split.{% else %}{{ cal.reason }}; the exported probabilities are the network's softmax.{% endif %}</p>
{% else %}<p>Probability calibration: none (the network's softmax).</p>{% endif %}
{% for c in training_charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% endfor %}
<h3>Train examples and class weights</h3>
<table><tr><th class="l">class</th><th>train examples</th><th>class weight</th></tr>
{% for name, n in r.training.train_counts.items() %}<tr><td class="l">{{ name }}</td><td>{{ n }}</td>
<td>{{ fmt(r.training.class_weights.get(name)) if r.training.class_weights else 'off' }}</td></tr>{% endfor %}
</table>
{% else %}<p>No training history ({{ r.training.note }}).</p>{% endif %}
<h3>Model summary</h3>
{% if r.training.summary %}<pre>{{ r.training.summary }}</pre>{% else %}<p class="muted">No model summary was written by this Trainer.</p>{% endif %}
</section>

<section id="evaluation"><h2>Evaluation ({{ r.evaluation.split }} split)</h2>
<table><tr><th class="l">metric (TFMA, overall)</th><th>value</th></tr>
{% for name, v in r.evaluation.overall %}<tr><td class="l">{{ name }}</td><td>{{ fmt(v) }}</td></tr>{% endfor %}
</table>
<h3>Per class</h3>
<table><tr><th class="l">class</th>{% for c in r.evaluation.class_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in r.evaluation.class_rows %}<tr><td class="l">{{ row.label }}</td>{% for v in row['values'] %}<td>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% if r.evaluation.interval_rows %}<h3 id="intervals">95% intervals</h3>
<p class="muted">{{ r.evaluation.intervals_method }} (IntervalGate). Read a value with its interval: two models whose intervals overlap widely may not differ.</p>
<table class="intervals"><tr><th class="l">metric</th><th>value [95% interval]</th></tr>
{% for name, text in r.evaluation.interval_rows %}<tr><td class="l">{{ name }}</td><td>{{ text }}</td></tr>{% endfor %}
</table>
<table class="intervals"><tr><th class="l">class</th><th>recall [95% interval]</th><th>precision [95% interval]</th></tr>
{% for name, recall, precision in r.evaluation.class_interval_rows %}<tr><td class="l">{{ name }}</td><td>{{ recall }}</td><td>{{ precision }}</td></tr>{% endfor %}
</table>{% else %}<p class="muted">No intervals: no IntervalGate in this pipeline.</p>{% endif %}
{% for c in eval_charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% endfor %}
{% for note in r.evaluation.notes %}<p class="muted">{{ note }}</p>{% endfor %}
</section>

<section id="slices"><h2>Slices and fairness</h2>
<p class="muted">Each table: one slice family of the EvalConfig, with each group's balanced accuracy and its 95% interval;
spread = max - min over its groups (descriptive only: small groups vary by chance and groups differ in class mix).
The subgroup gate compares each group with the rest (Blessing decision). Red: a gate failed on this group.</p>
{% for t in slices %}
<h3>{{ t.family }}{% if t.failed %} <span class="badge bad">gate failed</span>{% endif %}</h3>
<table><tr><th class="l">group</th>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}{% if t.has_intervals %}<th>balanced accuracy [95% interval]</th>{% endif %}</tr>
{% for row in t.rows %}<tr{% if row.failed %} class="failed"{% endif %}><td class="l">{{ row.group }}</td>{% for v in row['values'] %}<td>{{ fmt(v) }}</td>{% endfor %}{% if t.has_intervals %}<td>{{ row.interval or '' }}</td>{% endif %}</tr>{% endfor %}
<tr class="gap"><td class="l">spread</td>{% for g in t.gaps %}<td>{{ fmt(g) }}</td>{% endfor %}{% if t.has_intervals %}<td></td>{% endif %}</tr>
</table>
{% for g in t.gates %}<p class="{{ 'muted' if g.passed else 'bad' }}">Subgroup gate: {{ 'passed' if g.passed else 'FAILED' }} ({{ g.note }})</p>{% endfor %}
{% else %}<p>The evaluation has no slices besides the overall one.</p>{% endfor %}
</section>

<section id="explanations"><h2>Explanations (Grad-CAM)</h2>
{% if gradcam %}<p>Images of the {{ r.evaluation.split }} split per true class: the most confident correct predictions, then the most
confident wrong ones, with the Grad-CAM heatmap of the predicted class, computed by the
SavedModel's own <code>serving_gradcam</code> signature.</p>
<figure><img src="{{ gradcam }}" alt="Grad-CAM grid"><figcaption>Grad-CAM grid</figcaption></figure>
{% else %}<p>No Grad-CAM: {{ r.explanations.note }}</p>{% endif %}
</section>

<section id="blessing"><h2>Blessing decision</h2>
<p>{% if r.blessing.blessed %}<span class="badge ok">BLESSED</span>{% else %}<span class="badge bad">NOT BLESSED</span>{% endif %}
{{ r.blessing.summary }}</p>
<table><tr><th class="l">gate</th><th class="l">slices</th><th class="l">threshold</th><th>value</th><th class="l">verdict</th></tr>
{% for g in r.blessing.gates %}<tr{% if not g.passed %} class="failed"{% endif %}><td class="l">{{ g.metric }}</td><td class="l">{{ g.slices }}</td>
<td class="l">{{ g.threshold }}</td><td>{{ fmt(g.value) }}</td><td class="l">{{ 'passed' if g.passed else 'FAILED' }}</td></tr>{% endfor %}
</table>
{% for f in r.blessing.failures %}<p class="bad">FAILED: {{ f }}</p>{% endfor %}
{% if r.blessing.gap %}<h3 id="interval-gates">Subgroup and regression gates (IntervalGate)</h3>
<p>{{ 'passed' if r.blessing.gap.blessed else 'FAILED' }}{% if r.blessing.gap.get('note') %} ({{ r.blessing.gap.get('note') }}){% endif %}.
Subgroup rule: a group fails only when the whole interval of (group - rest) lies below minus the bound, on the mean recall over the classes with enough images in both (intervals widened for the number of groups compared).
Regression rule: refused only when the whole interval of the paired difference (candidate - latest blessed model, same images) lies below minus the bound.</p>
<table><tr><th class="l">gate</th><th class="l">slice family</th><th class="l">group: value vs rest, difference [interval]</th><th class="l">not measured</th><th>bound</th><th class="l">verdict</th></tr>
{% for g in r.blessing.gap.gates %}<tr{% if not g.passed %} class="failed"{% endif %}><td class="l">{{ g.gate }}</td><td class="l">{{ g.get('slice_family') or g.metric }}</td>
<td class="l">{% if g.get('groups') %}{% for k, v in g.groups.items() %}{{ k }}: {{ fmt(v.value) }} vs {{ fmt(v.rest) }}, {{ itext(v.difference) }}{% if not v.passed %} FAILED{% endif %}{% if not loop.last %}<br>{% endif %}{% endfor %}{% elif g.get('difference') %}{{ itext(g.difference) }}{% else %}{{ g.note }}{% endif %}</td>
<td class="l">{% for k, v in (g.get('excluded') or {}).items() %}{{ k }} ({{ v.examples }}: {{ v.reason }}){% if not loop.last %}; {% endif %}{% endfor %}</td>
<td>-{{ fmt(g.bound) }}</td><td class="l">{{ 'passed' if g.passed else 'FAILED' }}</td></tr>{% endfor %}
</table>{% else %}<p class="muted">No IntervalGate in this pipeline.</p>{% endif %}
</section>

<section id="pushed"><h2>Pushed artifacts</h2>
{% if r.pushed.pushed %}
<p>Version <b>{{ r.pushed.version }}</b> at <code>{{ r.pushed.destination }}</code>;
manifest <code>{{ r.pushed.manifest }}</code>.</p>
<table><tr><th class="l">file</th><th>bytes</th><th class="l">sha256</th></tr>
{% for name, f in r.pushed.files.items() %}<tr><td class="l">{{ name }}</td><td>{{ f.bytes }}</td><td class="l"><code>{{ f.sha256 }}</code></td></tr>{% endfor %}
</table>
{% else %}<p><span class="badge bad">NOTHING PUSHED</span> {{ r.pushed.reason }}</p>{% endif %}
{% if r.pushed.mobile %}<h3>Mobile export (parity with the SavedModel)</h3>
<table><tr><th class="l">format</th><th class="l">verdict</th><th>top-1 agreement</th><th>balanced accuracy drop</th><th class="l">reasons</th></tr>
{% for fmt_name, v in r.pushed.mobile.items() %}<tr{% if not v.passed %} class="failed"{% endif %}><td class="l">{{ fmt_name }}</td><td class="l">{{ 'passed' if v.passed else 'FAILED' }}</td>
<td>{{ itext(v.top1_agreement_interval) if v.get('top1_agreement_interval') else fmt(v.top1_agreement) }}</td><td>{{ itext(v.balanced_accuracy_drop_interval) if v.get('balanced_accuracy_drop_interval') else fmt(v.balanced_accuracy_drop) }}</td><td class="l">{{ (v.reasons or []) | join('; ') }}</td></tr>{% endfor %}
</table>
<p class="muted">Values [95% intervals over lesions]. A file fails when its agreement interval lies wholly below the bound, or when the upper bound of its balanced-accuracy drop exceeds the allowed drop.</p>{% elif r.pushed.mobile_note %}<p class="muted">Mobile export: {{ r.pushed.mobile_note }}</p>{% endif %}
</section>
</main></body></html>
"""

_CARD_MD_TEMPLATE = """# Model card: {{ c.name }}

Version: {{ c.version }} · generated {{ c.generated }} · {{ c.verdict }}

## Intended use

{{ c.intended_use }}

Out of scope: {{ c.out_of_scope }}

## Model

{{ c.model_description }}

## Training data and its known biases

{% for line in c.data_lines %}- {{ line }}
{% endfor %}
| class | {% for s in c.splits %}{{ s }} | {% endfor %}
|---|{% for s in c.splits %}---:|{% endfor %}
{% for row in c.class_rows %}| {{ row[0] }} | {% for v in row[1:] %}{{ v }} | {% endfor %}
{% endfor %}
Known biases:
{% for line in c.biases %}
- {{ line }}{% endfor %}

## Metrics (test split, {{ c.test_examples }} images)

{% for name, value in c.headline %}- **{{ name }}**: {{ value }}
{% endfor %}
| class | {% for col in c.class_metric_columns %}{{ col }} | {% endfor %}
|---|{% for col in c.class_metric_columns %}---:|{% endfor %}
{% for row in c.class_metric_rows %}| {{ row.label }} | {% for v in row['values'] %}{{ v }} | {% endfor %}
{% endfor %}
### Per slice
{% for t in c.slices %}
**{{ t.family }}**{% if t.failed %} (a gate failed){% endif %}

| group | {% for col in t.columns %}{{ col }} | {% endfor %}
|---|{% for col in t.columns %}---:|{% endfor %}
{% for row in t.rows %}| {{ row.group }}{% if row.failed %} ⚠{% endif %} | {% for v in row['values'] %}{{ v }} | {% endfor %}
{% endfor %}| spread | {% for g in t.gaps %}{{ g }} | {% endfor %}
{% else %}
No slices were evaluated.
{% endfor %}
## Limitations
{% for line in c.limitations %}
- {{ line }}{% endfor %}

## How it was gated
{% for line in c.gating %}
- {{ line }}{% endfor %}
"""

_CARD_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {{ c.name }}</title>
<style>{{ css }}</style></head><body>
<header><h1>Model card: {{ c.name }}</h1><div>Version {{ c.version }} &middot; generated {{ c.generated }} &middot; {{ c.verdict }}</div></header>
<main>
<section id="intended-use"><h2>Intended use</h2><p>{{ c.intended_use }}</p><p><b>Out of scope:</b> {{ c.out_of_scope }}</p></section>
<section id="model"><h2>Model</h2><p>{{ c.model_description }}</p></section>
<section id="training-data"><h2>Training data and its known biases</h2>
<ul>{% for line in c.data_lines %}<li>{{ line }}</li>{% endfor %}</ul>
<table><tr><th class="l">class</th>{% for s in c.splits %}<th>{{ s }}</th>{% endfor %}</tr>
{% for row in c.class_rows %}<tr><td class="l">{{ row[0] }}</td>{% for v in row[1:] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
<h3>Known biases</h3><ul>{% for line in c.biases %}<li>{{ line }}</li>{% endfor %}</ul></section>
<section id="metrics"><h2>Metrics (test split, {{ c.test_examples }} images)</h2>
<ul>{% for name, value in c.headline %}<li><b>{{ name }}</b>: {{ value }}</li>{% endfor %}</ul>
<table><tr><th class="l">class</th>{% for col in c.class_metric_columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in c.class_metric_rows %}<tr><td class="l">{{ row.label }}</td>{% for v in row['values'] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
<h3>Per slice</h3>
{% for t in c.slices %}<h4>{{ t.family }}</h4>
<table><tr><th class="l">group</th>{% for col in t.columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr{% if row.failed %} class="failed"{% endif %}><td class="l">{{ row.group }}</td>{% for v in row['values'] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}
<tr class="gap"><td class="l">spread</td>{% for g in t.gaps %}<td>{{ g }}</td>{% endfor %}</tr></table>
{% else %}<p>No slices were evaluated.</p>{% endfor %}</section>
<section id="limitations"><h2>Limitations</h2><ul>{% for line in c.limitations %}<li>{{ line }}</li>{% endfor %}</ul></section>
<section id="gating"><h2>How it was gated</h2><ul>{% for line in c.gating %}<li>{{ line }}</li>{% endfor %}</ul></section>
</main></body></html>
"""


def fmt(value) -> str:
  """Numbers for tables: integers as such, others with 4 decimals."""
  if value is None:
    return '—'
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  if math.isnan(number):
    return '—'
  return f'{number:.4f}'


def _environment() -> jinja2.Environment:
  env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True)
  env.globals['fmt'] = fmt
  env.globals['itext'] = intervals_lib.text
  return env


# --------------------------------------------------------------------------
# The report.


@dataclasses.dataclass
class ReportInputs:
  """Artifacts the report reads; None where the run has none."""
  examples: types.Artifact
  evaluation: types.Artifact
  blessing: types.Artifact
  model: types.Artifact
  statistics: Optional[types.Artifact] = None
  anomalies: Optional[types.Artifact] = None
  charts: Optional[types.Artifact] = None
  model_run: Optional[types.Artifact] = None
  mobile_models: Optional[types.Artifact] = None
  pushed_model: Optional[types.Artifact] = None
  gate_blessing: Optional[types.Artifact] = None


def _clean(value):
  """JSON-safe: NaN -> None, numpy -> Python, tuples -> lists."""
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, np.ndarray):
    return _clean(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(float(value)) else float(value)
  return value


def _model_dir(model: types.Artifact) -> str:
  from tfx.utils import path_utils  # pylint: disable=g-import-not-at-top
  return path_utils.serving_model_path(model.uri)


def _data_part(inputs: ReportInputs):
  data: Dict[str, Any] = {
      'ingestion': _read_json(os.path.join(inputs.examples.uri,
                                           INGESTION_REPORT_FILE)),
      'anomalies': (read_anomalies(inputs.anomalies.uri)
                    if inputs.anomalies is not None else None),
      'sources': {}, 'source_values': [], 'sex': {}}
  if inputs.statistics is not None:
    data['sources'] = category_counts(inputs.statistics.uri,
                                      features.DATASET_KEY)
    data['sex'] = category_counts(inputs.statistics.uri, features.SEX_KEY)
    data['source_values'] = sorted({v for c in data['sources'].values()
                                    for v in c})
  charts = []
  if inputs.charts is not None:
    for path in sorted(tf.io.gfile.glob(os.path.join(inputs.charts.uri,
                                                     '*.png'))):
      name = os.path.basename(path)
      charts.append({'title': name[:-4].replace('_', ' '),
                     'src': png_file_uri(path)})
  return data, charts


def _training_part(inputs: ReportInputs):
  training: Dict[str, Any] = {'history': None, 'note': 'no ModelRun artifact',
                              'summary': None, 'config': {},
                              'train_counts': {}, 'class_weights': None,
                              'epochs': 0}
  charts = []
  if inputs.model_run is not None:
    record = _read_json(os.path.join(inputs.model_run.uri, HISTORY_FILE))
    summary_path = os.path.join(inputs.model_run.uri, MODEL_SUMMARY_FILE)
    if tf.io.gfile.exists(summary_path):
      with tf.io.gfile.GFile(summary_path) as f:
        training['summary'] = f.read()
    if record is None:
      training['note'] = f'no {HISTORY_FILE} in {inputs.model_run.uri}'
    else:
      history = record.get('history') or {}
      training.update(
          history=history, config=record.get('config') or {},
          train_counts=record.get('train_counts') or {},
          class_weights=record.get('class_weights'),
          calibration=record.get('calibration'),
          epochs=max((len(v) for v in history.values()), default=0))
      charts = training_curves(history)
  return training, charts


def calibration_limitation(fit: Optional[Dict[str, Any]]) -> str:
  """The model card's sentence on what the probabilities are."""
  if fit and fit.get('method') == 'temperature' and fit.get('applied'):
    return (f'Probabilities are temperature scaled (T = '
            f'{fit["temperature"]:.3f}, fitted on the eval split: ECE '
            f'{fit["ece_before"]:.3f} -> {fit["ece_after"]:.3f} there; the '
            'test-split ECE is above). Calibrated on this archive\'s case '
            'mix only: they are not risks for another population or clinic.')
  tried = (f' (temperature scaling was tried on the eval split and '
           f'{fit["reason"]})' if fit and fit.get('reason') else '')
  return ('Probabilities are the network\'s softmax' + tried + '; see the '
          'test-split ECE and reliability plot. They are not risks; do not '
          'threshold them as such.')


def _evaluation_part(evaluation: Evaluation, labels, predictions, split,
                     prediction_note, melanoma: Optional[str] = None):
  part: Dict[str, Any] = {'split': split, 'notes': []}
  overall = dict(evaluation.overall)
  part['overall'] = [(k, _count_or_value(k, overall[k])) for k in sorted(
      overall, key=lambda k: (k != 'balanced_accuracy', k))]
  part['class_columns'], part['class_rows'] = per_class_table(
      evaluation, labels, predictions, melanoma or '')
  charts = []
  matrix = confusion_from_tfma(
      evaluation.plots.get('multi_class_confusion_matrix_at_thresholds'),
      len(labels))
  if matrix is None and predictions is not None:
    matrix = np.zeros((len(labels), len(labels)))
    for t, p in zip(predictions.labels,
                    predictions.probabilities.argmax(1)):
      matrix[t, p] += 1
    part['notes'].append('Confusion matrix: from the SavedModel\'s '
                         'predictions (the EvalConfig has no '
                         'MultiClassConfusionMatrixPlot).')
  if matrix is not None:
    part['confusion_matrix'] = matrix
    charts.append({'title': 'Confusion matrix', 'src': confusion_chart(
        matrix, labels)})
  curves = roc_from_tfma(evaluation.class_plots, labels)
  source = 'TFMA per-class ConfusionMatrixPlot'
  if not curves and predictions is not None:
    curves = roc_from_predictions(predictions, labels)
    source = f'the SavedModel\'s predictions on the {split} split (sklearn)'
  if curves:
    charts.append({'title': f'ROC curves (from {source})',
                   'src': roc_chart(curves, melanoma)})
    part['roc_auc'] = {k: v[2] for k, v in curves.items()}
  tfma_reliability = reliability_from_tfma(
      evaluation.plots.get('calibration_histogram_buckets'))
  if tfma_reliability is not None:
    conf, acc, counts = tfma_reliability
    charts.append({'title': 'Reliability (TFMA calibration plot)',
                   'src': reliability_chart(conf, acc, counts,
                                            'Reliability (TFMA)')})
  elif predictions is not None:
    conf, acc, counts, ece = reliability_from_predictions(predictions)
    part['top1_ece'] = ece
    charts.append({
        'title': f'Reliability of the top-1 probability, from the '
                 f'SavedModel\'s predictions (ECE {ece:.4f})',
        'src': reliability_chart(conf, acc, counts,
                                 'Reliability (top-1 confidence)')})
  if prediction_note:
    part['notes'].append(prediction_note)
  return part, charts


def _blessing_part(inputs: ReportInputs, evaluation: Evaluation,
                   gap: Optional[Dict[str, Any]], labels: Sequence[str]):
  return blessing_summary(_blessed(inputs.blessing), evaluation, gap, labels)


def _overall_value(evaluation: Evaluation, key: str) -> Optional[float]:
  """The overall slice's value; for a per-class metric (e.g. the melanoma
  recall, a ClassRecall whose class is in its config) the one class that
  has it."""
  if key in evaluation.overall:
    return evaluation.overall[key]
  found = [metrics[key] for metrics in evaluation.per_class.get((), {})
           .values() if key in metrics]
  return found[0] if len(found) == 1 else None


def blessing_summary(blessed: Optional[bool], evaluation: Evaluation,
                     gap: Optional[Dict[str, Any]], labels: Sequence[str]
                     ) -> Dict[str, Any]:
  """The decision, each configured threshold with its value, the failures.

  ``blessed`` is the Evaluator's blessing.  A threshold's value is the
  overall slice's (a per-class metric's: its one class's); its verdict
  comes from TFMA's validation failures, which are listed with their class
  and slice.  The run report and the pushed version's manifest
  (components/mobile_pusher.py) both show this.
  """
  failed = {f['metric'] for f in evaluation.failures}
  gates = []
  for t in evaluation.thresholds:
    metric = t['metric']
    snake = re.sub(r'(?<!^)(?=[A-Z])', '_', metric).lower()
    known = set(evaluation.overall) | {
        m for metrics in evaluation.per_class.get((), {}).values()
        for m in metrics}
    key = next((k for k in sorted(known)
                if k in (metric, snake) or k.lower() == metric.lower()),
               snake)
    if t['kind'] == 'change':
      key = f'{key} (change vs baseline)'
    gates.append({'metric': key, 'slices': t['slices'],
                  'threshold': t['threshold'],
                  'value': _overall_value(evaluation, key),
                  'passed': key not in failed and metric not in failed})
  failures = []
  for f in evaluation.failures:
    of_class = ''
    if f['class_id'] is not None:
      of_class = (f' of {labels[f["class_id"]]}'
                  if 0 <= f['class_id'] < len(labels)
                  else f' of class {f["class_id"]}')
    failures.append(f'{f["metric"]}{of_class} on {_slice_text(f["slice"])} '
                    f'= {fmt(f["value"])}, threshold {f["threshold"]}')
  final = bool(blessed) and (gap is None or bool(gap.get('blessed')))
  has_baseline = any('(change vs baseline)' in k for k in evaluation.overall)
  reasons = []
  if not blessed:
    reasons.append('the Evaluator did not bless the model'
                   + (f' ({len(failures)} threshold(s) failed)'
                      if failures else ''))
  if gap is not None and not gap.get('blessed'):
    reasons += interval_gate.failures(gap) or ['the interval gate did not '
                                               'bless the model']
  summary = ('All gates passed' if final else 'Not blessed: ' +
             '; '.join(reasons) if reasons else 'Not blessed')
  summary += ('; compared with the latest blessed model.' if has_baseline
              else '; no earlier blessed model to compare with.')
  return {'blessed': final, 'evaluator_blessed': blessed, 'gates': gates,
          'failures': failures, 'gap': gap, 'summary': summary,
          'has_baseline': has_baseline}


def _slice_text(key) -> str:
  return ' x '.join(f'{c}={v}' for c, v in key) or 'overall'


def _pushed_part(inputs: ReportInputs):
  pushed = {'pushed': False, 'reason': '', 'files': {}, 'mobile': None,
            'mobile_note': None, 'version': None, 'destination': None,
            'manifest': None}
  artifact = inputs.pushed_model
  if artifact is None:
    pushed['reason'] = 'the pusher did not run in this run.'
  elif not _artifact_property(artifact, 'pushed'):
    pushed['reason'] = ('the model was not blessed, so the pusher pushed '
                        'nothing.')
  else:
    pushed.update(pushed=True,
                  version=_artifact_property(artifact, 'pushed_version'),
                  destination=_artifact_property(artifact,
                                                 'pushed_destination'),
                  manifest=_artifact_property(artifact, 'manifest'))
    manifest = _read_json(pushed['manifest']) if pushed['manifest'] else None
    if manifest:
      pushed['files'] = manifest.get('files', {})
  mobile = inputs.mobile_models
  if mobile is not None:
    report = _read_json(os.path.join(mobile.uri, MOBILE_REPORT_FILE))
    verdicts = _artifact_property(mobile, 'verdicts')
    if verdicts:
      pushed['mobile'] = json.loads(verdicts)
    elif report and report.get('formats'):
      pushed['mobile'] = {
          f: {'passed': e['passed'], 'reasons': e.get('reasons'),
              **{k: (e.get('parity') or {}).get(k) for k in (
                  'top1_agreement', 'balanced_accuracy_drop',
                  'top1_agreement_interval',
                  'balanced_accuracy_drop_interval')}}
          for f, e in report['formats'].items()}
    else:
      pushed['mobile_note'] = ('nothing exported ('
                               f'{_artifact_property(mobile, "reason") or "?"})')
  return pushed


def _model_card_context(r: Dict[str, Any], labels, pipeline_name: str,
                        melanoma: Optional[str] = None):
  """Values of the model card, formatted."""
  ing = r['data']['ingestion'] or {}
  splits = list(ing.get('examples_per_split', {}))
  per = ing.get('examples_per_split_and_class', {})
  class_rows = [[name] + [per.get(s, {}).get(name, 0) for s in splits]
                for name in labels]
  overall = dict(r['evaluation']['overall'])
  mel_recall = None
  for row in r['evaluation']['class_rows']:
    if melanoma and row['label'] == melanoma:
      cols = r['evaluation']['class_columns']
      for col, v in zip(cols, row['values']):
        if 'recall' in col and '(change' not in col:
          mel_recall = v
  headline = list(r['evaluation'].get('interval_rows') or [])
  if headline:  # With 95% intervals (IntervalGate); TFMA's others after.
    shown = {'balanced_accuracy', 'accuracy', 'macro_f1', 'macro_auc',
             'expected_calibration_error'}
    headline.append(('(how the intervals were computed)',
                     r['evaluation']['intervals_method']))
  else:
    shown = {'balanced_accuracy'}
    headline = [('Melanoma recall (sensitivity)', fmt(mel_recall)),
                ('Balanced accuracy (mean per-class recall)',
                 fmt(overall.get('balanced_accuracy')))]
  for name, value in r['evaluation']['overall']:
    if (name not in shown and name != 'example_count'
        and '(change' not in name):
      headline.append((name, fmt(value)))
  if r['evaluation'].get('top1_ece') is not None:
    headline.append(('expected calibration error of the top-1 probability '
                     '(10 bins, computed by the report)',
                     fmt(r['evaluation']['top1_ece'])))
  sources = r['data']['sources']
  source_text = ', '.join(
      f'{v} ({int(sum(c.get(v, 0) for c in sources.values()))} images)'
      for v in r['data']['source_values']) or 'not recorded'
  data_lines = [
      f'Archive layout {ing.get("layout", "?")} at {ing.get("data_root", "?")}; '
      f'{ing.get("examples", "?")} images kept of {ing.get("input_records", "?")}'
      f' ({ing.get("quarantined", "?")} quarantined).',
      f'Acquisition sources (the dataset feature): {source_text}.',
      'Splits are by lesion: no lesion has images in two splits.',
  ]
  sex = r['data']['sex']
  if sex:
    values = sorted({v for c in sex.values() for v in c})
    data_lines.append('Sex (all splits): ' + ', '.join(
        f'{v} {int(sum(c.get(v, 0) for c in sex.values()))}'
        for v in values) + '.')
  total = {name: sum(per.get(s, {}).get(name, 0) for s in splits)
           for name in labels}
  n = sum(total.values()) or 1
  biases = [
      'Class mix: ' + ', '.join(f'{k} {v / n:.1%}' for k, v in total.items())
      + '. Rare classes have few test images, so their recall is uncertain.',
      'Skin types: HAM10000 (Vienna and Queensland dermoscopy) is mostly '
      'light skin (Fitzpatrick I-III) and records no skin type; performance '
      'on darker skin (IV-VI) is unmeasured and may be worse.',
      'Dermoscopic images from specialist clinics only; clinical '
      '(non-dermoscopic) and smartphone photos are out of distribution.',
      'Age and sex are recorded but unevenly; small subgroups are reported '
      'in the slice tables with their counts.',
  ]
  gating = [f'{g["metric"]} on {g["slices"]}: {g["threshold"]} -> value '
            f'{fmt(g["value"])}, {"passed" if g["passed"] else "FAILED"}'
            for g in r['blessing']['gates']]
  gap = r['blessing']['gap']
  if gap:
    gating += [f'{g["gate"]} gate'
               + (f' over {g["slice_family"]}' if g.get('slice_family')
                  else '')
               + f': {"passed" if g.get("passed") else "FAILED"} '
               f'({g.get("note")})' for g in gap.get('gates', [])]
  else:
    gating.append('No IntervalGate (subgroup and regression gates) ran in '
                  'this pipeline.')
  mobile = r['pushed'].get('mobile') or {}
  gating += [f'TFLite {f}: parity with the SavedModel '
             f'{"passed" if v.get("passed") else "FAILED (not pushed)"}'
             + (f' (top-1 agreement '
                f'{intervals_lib.text(v["top1_agreement_interval"])}, '
                'balanced accuracy drop '
                f'{intervals_lib.text(v["balanced_accuracy_drop_interval"])})'
                if v.get('top1_agreement_interval') else '')
             for f, v in mobile.items()]
  gating.append('Decision: ' + r['blessing']['summary'])
  slices = [{'family': t['family'], 'failed': t['failed'],
             'columns': t['columns'] + (
                 ['balanced accuracy [95% interval]'] if t['has_intervals']
                 else []),
             'rows': [{'group': row['group'], 'failed': row['failed'],
                       'values': [fmt(v) for v in row['values']]
                                 + ([row['interval'] or '']
                                    if t['has_intervals'] else [])}
                      for row in t['rows']],
             'gaps': [fmt(g) for g in t['gaps']]
                     + ([''] if t['has_intervals'] else [])}
            for t in r['slices']]
  config = r['training']['config']
  class_intervals = {name: (recall, precision) for name, recall, precision
                     in r['evaluation'].get('class_interval_rows') or []}
  return {
      'name': pipeline_name,
      'version': r['pushed']['version'] or 'not pushed',
      'generated': r['generated'],
      'verdict': ('blessed and pushed' if r['pushed']['pushed'] else
                  'blessed, not pushed' if r['blessing']['blessed'] else
                  'NOT blessed: not for use'),
      'intended_use': (
          'Decision support for trained clinicians (dermatologists) looking '
          'at dermoscopic images of skin lesions: it ranks the '
          f'{len(labels)} classes ({", ".join(labels)}) to prompt a second '
          'look. It is not a diagnosis and must not be used without a '
          'clinician, nor to rule out melanoma.'),
      'out_of_scope': ('self-diagnosis by patients; non-dermoscopic '
                       'photographs; lesion types outside the label list; '
                       'populations unlike the training data (see biases).'),
      'model_description': (
          f'{config.get("model", "?")} trained by the TFX Trainer '
          f'({r["training"]["epochs"]} epochs, image size '
          f'{config.get("image_size", "?")}, class weights '
          f'{"on" if r["training"]["class_weights"] else "off"}); SavedModel '
          f'signatures {", ".join(r["signatures"]) or "?"}; TFLite files '
          'where their parity gate passed.'),
      'data_lines': data_lines, 'splits': splits, 'class_rows': class_rows,
      'biases': biases, 'headline': headline,
      'test_examples': fmt(overall.get('example_count')),
      'class_metric_columns': r['evaluation']['class_columns'] + (
          ['recall [95% interval]', 'precision [95% interval]']
          if class_intervals else []),
      'class_metric_rows': [{'label': row['label'],
                             'values': [fmt(v) for v in row['values']]
                                       + list(class_intervals.get(
                                           row['label'], ()))}
                            for row in r['evaluation']['class_rows']],
      'slices': slices,
      'limitations': [
          'Evaluated on a held-out split of the same archive: external '
          'validity (other clinics, devices, populations) is not shown.',
          'Per-slice numbers on small groups are noisy (read their 95% '
          'intervals); spreads on groups '
          'below the gate\'s minimum size are not gated.',
          calibration_limitation(r['training'].get('calibration')),
          'Grad-CAM shows where evidence for the predicted class lies, at '
          'the feature map\'s coarse resolution; it is not a segmentation '
          'and does not prove the model uses clinically valid features.',
      ],
      'gating': gating,
  }


def build_report(inputs: ReportInputs, out_dir: str, pipeline_name: str,
                 split: str = 'test', gradcam_per_class: int = 2,
                 melanoma_label: str = DEFAULT_MELANOMA) -> Dict[str, Any]:
  """Writes report.html, model_card.md / .html and report.json to out_dir.

  Returns the numbers (report.json's content).
  """
  split_files = [os.path.join(artifact_utils.get_split_uri(
      [inputs.examples], split), '*')]
  labels = preprocessing.read_labels(split_files)
  melanoma = _melanoma(labels, melanoma_label)
  data, data_charts = _data_part(inputs)
  training, training_charts = _training_part(inputs)
  evaluation = read_evaluation(inputs.evaluation.uri)
  model_dir = _model_dir(inputs.model)
  predictions, prediction_note, loaded = None, None, None
  try:
    loaded = tf.saved_model.load(model_dir)
    predictions = predict_split(loaded, split_files)
  except Exception as e:  # pylint: disable=broad-except
    prediction_note = f'No predictions from the SavedModel: {e}'
    logging.warning(prediction_note)
  eval_part, eval_charts = _evaluation_part(evaluation, labels, predictions,
                                            split, prediction_note, melanoma)
  gap = read_gate_report(inputs.gate_blessing)
  found = (interval_gate.read_intervals(inputs.gate_blessing.uri)
           if inputs.gate_blessing is not None else None)
  eval_part['interval_rows'], eval_part['class_interval_rows'] = (
      interval_rows(found, labels, melanoma or ''))
  eval_part['intervals_method'] = (
      f'{found["confidence"]:.0%} intervals, {found["method"]}, '
      f'{found["draws"]} draws, seed {found["seed"]}; '
      f'{found["overall"]["examples"]} images of '
      f'{found["overall"]["lesions"]} lesions' if found else None)
  slices = slice_tables(evaluation, labels, (gap or {}).get('gates', []),
                        found, melanoma or '')

  gradcam, explanations = None, {'note': 'no predictions', 'cells': {}}
  if gradcam_per_class <= 0:
    explanations['note'] = ('Grad-CAM off (gradcam_per_class '
                            f'{gradcam_per_class})')
  elif predictions is not None:
    cells = pick_gradcam_examples(predictions.labels,
                                  predictions.probabilities, len(labels),
                                  gradcam_per_class)
    chosen = sorted({i for c in cells.values() for kind in c.values()
                     for i in kind})
    answers, reason = gradcam_signature_answers(
        loaded, [predictions.jpegs[i] for i in chosen])
    if answers is None:
      explanations['note'] = reason
    else:
      images, probabilities, heatmaps = answers
      positions = {index: j for j, index in enumerate(chosen)}
      gradcam = gradcam_grid(images, heatmaps, cells, positions, labels,
                             predictions.probabilities, gradcam_per_class)
      explanations = {
          'note': None,
          'cells': {labels[c]: {kind: [predictions.image_ids[i] for i in v]
                                for kind, v in cell.items()}
                    for c, cell in cells.items()},
          'max_probability_difference': float(np.abs(
              probabilities - predictions.probabilities[chosen]).max())}

  r = {
      'pipeline_name': pipeline_name,
      'signatures': sorted(loaded.signatures) if loaded is not None else [],
      'generated': datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M UTC'),
      'model_uri': inputs.model.uri,
      'labels': list(labels),
      'data': data, 'training': training, 'evaluation': eval_part,
      'slices': slices, 'explanations': explanations,
      # {"value", "lower", "upper"} per metric, overall and per group.
      'intervals': found,
      'blessing': _blessing_part(inputs, evaluation, gap, labels),
      'pushed': _pushed_part(inputs),
  }
  env = _environment()
  tf.io.gfile.makedirs(out_dir)
  page = env.from_string(_REPORT_TEMPLATE).render(
      r=r, css=_CSS, sections=SECTIONS, model_card=MODEL_CARD_HTML,
      titles={'data': 'Data', 'training': 'Training',
              'evaluation': 'Evaluation', 'slices': 'Slices and fairness',
              'explanations': 'Explanations', 'blessing': 'Blessing',
              'pushed': 'Pushed artifacts'},
      charts=data_charts, training_charts=training_charts,
      eval_charts=eval_charts, slices=slices, gradcam=gradcam)
  card = _model_card_context(r, labels, pipeline_name, melanoma)
  card_md = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
      _CARD_MD_TEMPLATE).render(c=card)
  card_html = env.from_string(_CARD_HTML_TEMPLATE).render(c=card, css=_CSS)
  for name, text in ((REPORT_FILE, page), (MODEL_CARD_MD, card_md),
                     (MODEL_CARD_HTML, card_html)):
    with tf.io.gfile.GFile(os.path.join(out_dir, name), 'w') as f:
      f.write(text)
  for t in slices:
    for row in t['rows']:
      row.pop('raw', None)
  numbers = _clean(r)
  with tf.io.gfile.GFile(os.path.join(out_dir, DATA_FILE), 'w') as f:
    json.dump(numbers, f, indent=1, default=str)
  return numbers


@component
def RunReporter(
    examples: InputArtifact[standard_artifacts.Examples],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    model: InputArtifact[standard_artifacts.Model],
    report: OutputArtifact[RunReport],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies] = None,
    charts: InputArtifact[DataCharts] = None,
    model_run: InputArtifact[standard_artifacts.ModelRun] = None,
    mobile_models: InputArtifact[MobileModels] = None,
    pushed_model: InputArtifact[standard_artifacts.PushedModel] = None,
    gate_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    pipeline_name: Parameter[str] = 'skin-lesion-tfx',
    split: Parameter[str] = 'test',
    gradcam_per_class: Parameter[int] = 2,
    melanoma_label: Parameter[str] = DEFAULT_MELANOMA) -> None:
  """Writes the run's HTML report and model card (see the module docstring).

  Runs whether or not the model was blessed or pushed: the exporter's,
  pusher's and gap gate's outputs are optional inputs.
  """
  numbers = build_report(
      ReportInputs(examples=examples, evaluation=evaluation,
                   blessing=blessing, model=model, statistics=statistics,
                   anomalies=anomalies, charts=charts, model_run=model_run,
                   mobile_models=mobile_models, pushed_model=pushed_model,
                   gate_blessing=gate_blessing),
      report.uri, pipeline_name=pipeline_name, split=split,
      gradcam_per_class=gradcam_per_class, melanoma_label=melanoma_label)
  report.set_int_custom_property('blessed',
                                 int(bool(numbers['blessing']['blessed'])))
  report.set_int_custom_property('pushed',
                                 int(bool(numbers['pushed']['pushed'])))
  report.set_string_custom_property(
      'report', os.path.join(report.uri, REPORT_FILE))
  report.set_string_custom_property(
      'model_card', os.path.join(report.uri, MODEL_CARD_MD))
  logging.info('Run report: %s', os.path.join(report.uri, REPORT_FILE))
