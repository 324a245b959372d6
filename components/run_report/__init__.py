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

# The package's modules, and every name the single module had (code and tests
# use them as run_report.X).
from components.run_report.readers import (  # pylint: disable=unused-import
    INGESTION_REPORT_FILE,
    HISTORY_FILE,
    MODEL_SUMMARY_FILE,
    MOBILE_REPORT_FILE,
    STATS_FILE,
    ANOMALIES_FILE,
    _read_json,
    _number,
    _split_dirs,
    category_counts,
    read_anomalies,
    _slice_key,
    _metric_name,
    _metric_value,
    _candidate,
    Evaluation,
    read_evaluation,
    threshold_text,
    _threshold_rows,
    _slicing_text,
    read_thresholds,
    Predictions,
    predict_split,
    gradcam_signature_answers,
    read_gate_report,
    _blessed,
    _artifact_property)
from components.run_report.charts import (  # pylint: disable=unused-import
    _png,
    png_file_uri,
    training_curves,
    confusion_chart,
    roc_chart,
    reliability_chart,
    gradcam_grid)
from components.run_report.metrics import (  # pylint: disable=unused-import
    DEFAULT_MELANOMA,
    _melanoma,
    RELIABILITY_BINS,
    fmt,
    pick_gradcam_examples,
    confusion_from_tfma,
    roc_from_tfma,
    roc_from_predictions,
    reliability_from_predictions,
    reliability_from_tfma,
    _family,
    _family_of_gate,
    slice_tables,
    _count_or_value,
    _group_name,
    per_class_table,
    interval_rows,
    calibration_limitation,
    _overall_value,
    blessing_summary,
    _slice_text)
from components.run_report.render import (  # pylint: disable=unused-import
    TEMPLATES_DIR,
    TEMPLATE_FILES,
    _environment,
    css,
    render_model_card,
    render_report)
from components.run_report.builder import (  # pylint: disable=unused-import
    REPORT_FILE,
    MODEL_CARD_MD,
    MODEL_CARD_HTML,
    DATA_FILE,
    SECTIONS,
    ReportInputs,
    _clean,
    _model_dir,
    _data_part,
    _training_part,
    _evaluation_part,
    _blessing_part,
    _pushed_part,
    _model_card_context,
    build_report)
from components.run_report.component import (  # pylint: disable=unused-import
    RunReport,
    RunReporter)
