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

The package: ``readers`` (TFMA results and the run's artifacts: the one
reader the report, the manifest and pipeline/summary.py share), ``charts``
(matplotlib), ``metrics`` (the numbers the tables show), ``render`` (the
jinja2 templates), ``builder`` (build_report) and ``component``
(RunReporter, RunReport).
"""


import importlib

# Every name the single module had, and the package's new ones, as
# run_report.X (code and tests use them so).  Lazy: importing one module
# (pipeline/summary.py imports readers) does not import matplotlib and TFX's
# component machinery.
_NAMES = {
    'INGESTION_REPORT_FILE': 'readers',
    'HISTORY_FILE': 'readers',
    'MODEL_SUMMARY_FILE': 'readers',
    'MOBILE_REPORT_FILE': 'readers',
    'STATS_FILE': 'readers',
    'ANOMALIES_FILE': 'readers',
    '_read_json': 'readers',
    '_number': 'readers',
    '_split_dirs': 'readers',
    'category_counts': 'readers',
    'read_anomalies': 'readers',
    '_slice_key': 'readers',
    '_metric_name': 'readers',
    '_metric_value': 'readers',
    '_candidate': 'readers',
    'Evaluation': 'readers',
    'read_evaluation': 'readers',
    'threshold_text': 'readers',
    '_threshold_rows': 'readers',
    '_slicing_text': 'readers',
    'read_thresholds': 'readers',
    'Predictions': 'readers',
    'predict_split': 'readers',
    'read_gate_report': 'readers',
    '_blessed': 'readers',
    '_artifact_property': 'readers',
    'metric_records': 'readers',
    'candidate_values': 'readers',
    'read_validation': 'readers',
    'change_lower_is_better': 'readers',
    'change_threshold_text': 'readers',
    'read_gate_report_file': 'readers',
    'read_intervals': 'readers',
    'feature_statistics': 'readers',
    'statistics_category_counts': 'readers',
    'read_ingestion_report': 'readers',
    'artifact_property': 'readers',
    '_png': 'charts',
    'png_file_uri': 'charts',
    'training_curves': 'charts',
    'confusion_chart': 'charts',
    'roc_chart': 'charts',
    'reliability_chart': 'charts',
    'gradcam_grid': 'charts',
    'DEFAULT_MELANOMA': 'metrics',
    '_melanoma': 'metrics',
    'RELIABILITY_BINS': 'metrics',
    'fmt': 'metrics',
    'pick_gradcam_examples': 'metrics',
    'confusion_from_tfma': 'metrics',
    'roc_from_tfma': 'metrics',
    'roc_from_predictions': 'metrics',
    'reliability_from_predictions': 'metrics',
    'reliability_from_tfma': 'metrics',
    '_family': 'metrics',
    '_family_of_gate': 'metrics',
    'slice_tables': 'metrics',
    '_count_or_value': 'metrics',
    '_group_name': 'metrics',
    'per_class_table': 'metrics',
    'interval_rows': 'metrics',
    'calibration_limitation': 'metrics',
    '_overall_value': 'metrics',
    'blessing_summary': 'metrics',
    '_slice_text': 'metrics',
    'TEMPLATES_DIR': 'render',
    'TEMPLATE_FILES': 'render',
    '_environment': 'render',
    'css': 'render',
    'render_model_card': 'render',
    'render_report': 'render',
    'REPORT_FILE': 'builder',
    'MODEL_CARD_MD': 'builder',
    'MODEL_CARD_HTML': 'builder',
    'DATA_FILE': 'builder',
    'SECTIONS': 'builder',
    'ReportInputs': 'builder',
    '_clean': 'builder',
    '_model_dir': 'builder',
    '_data_part': 'builder',
    '_training_part': 'builder',
    '_evaluation_part': 'builder',
    '_blessing_part': 'builder',
    '_pushed_part': 'builder',
    '_model_card_context': 'builder',
    'build_report': 'builder',
    'gradcam_signature_answers': 'builder',
    'RunReport': 'component',
    'RunReporter': 'component',
}


def __getattr__(name):
  if name in _NAMES:
    module = importlib.import_module(f'{__name__}.{_NAMES[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_NAMES))
