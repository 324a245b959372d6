"""build_report: report.html, model_card.md / .html and report.json."""

import dataclasses
import datetime
import json
import math
import os
from typing import Any, Dict, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.types import artifact_utils

from components import intervals as intervals_lib
from models import explain
from models import features
from models import preprocessing
from components.run_report.readers import (
    HISTORY_FILE,
    MODEL_SUMMARY_FILE,
    MOBILE_REPORT_FILE,
    _read_json,
    category_counts,
    read_anomalies,
    Evaluation,
    read_evaluation,
    predict_split,
    read_gate_report,
    read_ingestion_report,
    read_intervals,
    _blessed,
    _artifact_property)
from components.run_report.charts import (
    png_file_uri,
    training_curves,
    confusion_chart,
    roc_chart,
    reliability_chart,
    gradcam_grid)
from components.run_report.metrics import (
    DEFAULT_MELANOMA,
    _melanoma,
    fmt,
    pick_gradcam_examples,
    confusion_from_tfma,
    roc_from_tfma,
    roc_from_predictions,
    reliability_from_predictions,
    reliability_from_tfma,
    slice_tables,
    _count_or_value,
    per_class_table,
    interval_rows,
    calibration_limitation,
    blessing_summary)
from components.run_report import render

REPORT_FILE = 'report.html'
MODEL_CARD_MD = 'model_card.md'
MODEL_CARD_HTML = 'model_card.html'
DATA_FILE = 'report.json'


SECTIONS = ('data', 'training', 'evaluation', 'slices', 'explanations',
            'blessing', 'pushed')


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


def _data_part(inputs: ReportInputs):
  data: Dict[str, Any] = {
      'ingestion': read_ingestion_report(inputs.examples.uri),
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
  found = (read_intervals(inputs.gate_blessing.uri)
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
  tf.io.gfile.makedirs(out_dir)
  page = render.render_report(
      r=r, sections=SECTIONS, model_card=MODEL_CARD_HTML,
      titles={'data': 'Data', 'training': 'Training',
              'evaluation': 'Evaluation', 'slices': 'Slices and fairness',
              'explanations': 'Explanations', 'blessing': 'Blessing',
              'pushed': 'Pushed artifacts'},
      charts=data_charts, training_charts=training_charts,
      eval_charts=eval_charts, slices=slices, gradcam=gradcam)
  card = render.render_model_card(
      _model_card_context(r, labels, pipeline_name, melanoma))
  card_md, card_html = card['md'], card['html']
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
