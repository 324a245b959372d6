"""The skin-lesion TFX pipeline: wiring only; every value comes from Settings.

ImageExampleGen -> StatisticsGen (curated schema from ImportSchemaGen) ->
ExampleValidator -> AnomaliesGate (schema anomalies, drift vs the previous
validated span) -> Trainer -> Evaluator (TFMA metrics per slice and value
thresholds, vs the latest other model the Evaluator blessed) -> IntervalGate
(95% intervals by a bootstrap over lesions; subgroup gate: each sex / age
band / site group vs the rest; regression gate: paired difference vs the
latest blessed model) -> MobileExporter (.tflite formats, parity
gate) -> MobilePusher (one atomic version directory: SavedModel, passing
.tflite files, labels, manifest; only when both blessings are positive) ->
RunReporter (report.html and the model card, blessed or not).

Every orchestrator compiles this same pipeline: local_runner.py
(LocalDagRunner) and kubeflow_runner.py (KubeflowV2DagRunner, for Kubeflow
Pipelines v2 and Vertex AI Pipelines); only the settings differ.
"""

import hashlib
import json
import os
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from tfx import v1 as tfx

from components import anomalies_gate
from components import baseline_model
from components import data_report as data_report_lib
from components import image_example_gen
from components import interval_gate
from components import mobile_exporter
from components import mobile_pusher
from components import run_report
from components import tfma_metrics
from models import features
from pipeline import configs

# The Trainer's module file: models/trainer.py.  TFX packages the whole
# models/ folder, so any model-code edit invalidates the Trainer's cache.
TRAINER_MODULE_FILE = os.path.join(configs.PROJECT_ROOT, 'models',
                                   'trainer.py')
# The Tuner's entry point (tuner_fn), packaged from the same models/ folder;
# tuner.py imports trainer.py, never the other way round.
TUNER_MODULE_FILE = os.path.join(configs.PROJECT_ROOT, 'models', 'tuner.py')


# Orchestrators create_pipeline builds for.
LOCAL = 'local'         # LocalDagRunner (local_runner.py)
KUBEFLOW = 'kubeflow'   # KubeflowV2DagRunner (kubeflow_runner.py)


def trainer_resources(settings: configs.Settings):
  """The Trainer's container resources on Kubeflow / Vertex, or None.

  A KFP ResourceSpec (the V2 runner's ``platform_config``): CPU and memory
  limits and an accelerator (type and count).  LocalDagRunner refuses this
  kind of platform config, so local pipelines do not get it.
  """
  if bool(settings.trainer_accelerator_type) != bool(
      settings.trainer_accelerator_count):
    raise ValueError('set both trainer_accelerator_type and '
                     'trainer_accelerator_count, or neither')
  if not (settings.trainer_cpu_limit or settings.trainer_memory_limit
          or settings.trainer_accelerator_type):
    return None
  # kfp-pipeline-spec (installed with kfp) defines the proto; imported here so
  # that local runs do not need it.
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
  spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec
  resources = spec.ResourceSpec(cpu_limit=settings.trainer_cpu_limit,
                                memory_limit=settings.trainer_memory_limit)
  if settings.trainer_accelerator_type:
    resources.accelerator.type = settings.trainer_accelerator_type
    resources.accelerator.count = settings.trainer_accelerator_count
  return resources


# Names of the TFMA metrics the gates read.
BALANCED_ACCURACY = tfma_metrics.BALANCED_ACCURACY_NAME
MELANOMA_RECALL = 'melanoma_recall'
# Feature keys the evaluation may slice on (configs.EVAL_SLICES names them).
SLICEABLE_FEATURES = (features.LABEL_KEY, features.SEX_KEY,
                      features.AGE_BAND_KEY, features.LOCALIZATION_KEY,
                      features.DATASET_KEY)


def slicing_specs() -> List[tfma.SlicingSpec]:
  """configs.EVAL_SLICES as TFMA slicing specs (() is the overall slice)."""
  specs = []
  for keys in configs.EVAL_SLICES:
    unknown = set(keys) - set(SLICEABLE_FEATURES)
    if unknown:
      raise ValueError(f'configs.EVAL_SLICES names unknown features {unknown}')
    specs.append(tfma.SlicingSpec(feature_keys=list(keys)))
  return specs


# Fairness Indicators' rates (TFMA class, the name FairnessIndicators gives
# it).  TFMA 0.47 moved the FairnessIndicators metric itself into the
# fairness-indicators package, which the pinned stack does not install; these
# are the same rates from TFMA's own confusion-matrix metrics, under the same
# names ('fairness_indicators_metrics/false_negative_rate@0.5', ...), so Fairness
# Indicators' viewers read them.
FAIRNESS_RATES = (('MissRate', 'false_negative_rate'),
                  ('FallOut', 'false_positive_rate'),
                  ('FalseDiscoveryRate', 'false_discovery_rate'),
                  ('FalseOmissionRate', 'false_omission_rate'),
                  ('PredictedPositiveRate', 'positive_rate'))
FAIRNESS_PREFIX = 'fairness_indicators_metrics/'


def fairness_indicator_metrics() -> List[tfma.MetricConfig]:
  return [tfma.MetricConfig(
      class_name=class_name,
      config=json.dumps({'thresholds': [threshold],
                         'name': f'{FAIRNESS_PREFIX}{name}@{threshold:g}'}))
          for threshold in configs.FAIRNESS_THRESHOLDS
          for class_name, name in FAIRNESS_RATES]


def melanoma_class_id(settings: configs.Settings) -> int:
  mel = settings.melanoma_class
  if not mel:
    raise ValueError(f'the melanoma gate needs a melanoma class in the label '
                     f'list {list(settings.labels)} (set melanoma_label)')
  return list(settings.labels).index(mel)


def build_eval_config(settings: configs.Settings) -> tfma.EvalConfig:
  """TFMA config: metrics per class and slice, and the blessing thresholds.

  Top-1 metrics (balanced accuracy, per-class precision / recall / F1, macro
  F1, the normalized confusion matrix) and the expected calibration error
  are custom TFMA metrics (components/tfma_metrics.py); one-vs-rest AUC per
  class and its macro average, accuracy, example counts, the confusion
  matrix plot, per-class calibration plots and the Fairness Indicators
  rates (each class one-vs-rest at configs.FAIRNESS_THRESHOLDS, see
  FAIRNESS_RATES) are TFMA's own.  Every
  metric is computed on every slice of configs.EVAL_SLICES.

  Blessing thresholds, on the overall slice only (small slices would fail
  any bound by chance; the IntervalGate judges slices on intervals): balanced
  accuracy >= min_balanced_accuracy and melanoma top-1 recall >=
  min_melanoma_recall.  The regression against the latest blessed model is
  the IntervalGate's paired, lesion-bootstrapped difference, not a TFMA
  change threshold (a raw difference); TFMA still reports the diff.
  """
  n_classes = len(settings.labels)
  class_ids = list(range(n_classes))
  per_class = tfma.BinarizationOptions(class_ids={'values': class_ids})
  overall = [tfma.SlicingSpec()]
  balanced_accuracy_gate = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={'value': settings.min_balanced_accuracy}))
  melanoma_gate = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={'value': settings.min_melanoma_recall}))
  custom = tfma_metrics.__name__
  # Melanoma recall (the same metric, named for its gate); "not applicable"
  # (no spec, no gate) when the label list has no melanoma class.
  melanoma_specs = [tfma.MetricsSpec(
      binarize=tfma.BinarizationOptions(
          class_ids={'values': [melanoma_class_id(settings)]}),
      metrics=[tfma.MetricConfig(
          class_name='ClassRecall', module=custom,
          config=json.dumps({'name': MELANOMA_RECALL}),
          per_slice_thresholds=[tfma.PerSliceMetricThreshold(
              slicing_specs=overall, threshold=melanoma_gate)])])
  ] if settings.melanoma_class else []
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name=features.EXAMPLE_SIGNATURE,
          label_key=features.LABEL_KEY,
          prediction_key=features.PREDICTION_KEY)],
      slicing_specs=slicing_specs(),
      metrics_specs=[
          tfma.MetricsSpec(metrics=[
              tfma.MetricConfig(class_name='ExampleCount'),
              tfma.MetricConfig(class_name='SparseCategoricalAccuracy',
                                config='{"name": "accuracy"}'),
              tfma.MetricConfig(class_name='MultiClassConfusionMatrixPlot'),
              tfma.MetricConfig(class_name='MacroF1', module=custom),
              tfma.MetricConfig(
                  class_name='NormalizedConfusionMatrix', module=custom,
                  config=json.dumps({'n_classes': n_classes})),
              tfma.MetricConfig(
                  class_name='ExpectedCalibrationError', module=custom,
                  config=json.dumps({'bins': configs.CALIBRATION_BINS})),
          ]),
          # Balanced accuracy (mean per-class top-1 recall), gated.
          tfma.MetricsSpec(metrics=[tfma.MetricConfig(
              class_name='BalancedAccuracy', module=custom,
              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                  slicing_specs=overall, threshold=balanced_accuracy_gate)])]),
          # Top-1 precision / recall / F1 per class (sub keys classId:N).
          tfma.MetricsSpec(binarize=per_class, metrics=[
              tfma.MetricConfig(class_name='ClassRecall', module=custom),
              tfma.MetricConfig(class_name='ClassPrecision', module=custom),
              tfma.MetricConfig(class_name='ClassF1', module=custom),
          ]),
          # One-vs-rest: AUC per class and its macro average, calibration
          # plots, Fairness Indicators.
          tfma.MetricsSpec(
              binarize=per_class,
              aggregate=tfma.AggregationOptions(
                  macro_average=True,
                  class_weights={c: 1.0 for c in class_ids}),
              metrics=[tfma.MetricConfig(
                  class_name='AUC', config=json.dumps(
                      {'num_thresholds': settings.auc_thresholds}))]),
          tfma.MetricsSpec(binarize=per_class, metrics=[
              tfma.MetricConfig(
                  class_name='CalibrationPlot',
                  config=json.dumps({'num_buckets': configs.CALIBRATION_BINS})),
          ] + fairness_indicator_metrics()),
      ] + melanoma_specs)


def interval_slice_features() -> List[str]:
  """The features whose groups get intervals: EVAL_SLICES' single-feature
  slices but the label's (per-class metrics cover those)."""
  return [keys[0] for keys in configs.EVAL_SLICES
          if len(keys) == 1 and keys[0] != features.LABEL_KEY]


def interval_gate_scoring(settings: configs.Settings) -> Dict[str, Any]:
  """IntervalGate's parameters for scoring one split (all but the split,
  the baseline's regression bound and the artifacts): also those of
  interval_gate.score_candidate, which benchmarks/gates_on_split.py calls
  on the eval split."""
  return dict(
      labels=json.dumps(list(settings.labels)),
      melanoma_label=settings.melanoma_class,
      slice_features=json.dumps(interval_slice_features()),
      slice_families=json.dumps(list(configs.SUBGROUP_GAP_FAMILIES)),
      metric=settings.subgroup_gap_metric,
      max_gap=settings.max_subgroup_gap,
      min_examples=settings.min_subgroup_examples,
      min_class_examples=settings.min_subgroup_class_examples,
      exclude_unknown=int(settings.subgroup_gap_exclude_unknown),
      confidence=settings.interval_confidence,
      draws=settings.bootstrap_draws,
      seed=settings.seed,
      calibration_bins=configs.CALIBRATION_BINS)


def resolve_auto_labels(settings: configs.Settings) -> None:
  """labels 'auto': sets settings.labels to the archive's classes, sorted
  (folder names, or the label column's values through the label map; the
  newest span folder when spans are set).  Other label lists: nothing."""
  if not configs.labels_are_auto(settings.labels):
    return
  root = settings.data_root
  if settings.span_folder:
    root = image_example_gen.latest_span_root(root, settings.span_folder)
  found = image_example_gen.archive_labels(root, settings.layout,
                                           settings.effective_label_map)
  if len(found) < 2:
    raise ValueError(f'--labels auto: the archive {root} ({settings.layout}) '
                     f'names {len(found)} class(es) {found}; need >= 2')
  settings.labels = tuple(found)


def derived_schema_path(settings: configs.Settings, text: str) -> str:
  """Where derive_schema writes a schema of this content: under the output
  home, in a folder named by the content's hash (ImportSchemaGen's cache
  key is the file's path, so another label list must be another path)."""
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  return os.path.join(settings.home, 'schema', settings.pipeline_name,
                      digest, 'schema.pbtxt')


def derive_schema(settings: configs.Settings) -> str:
  """The curated schema with its label domain derived from the label list.

  Everything but the label's int domain [0, n - 1] comes from the curated
  schema (settings.schema_path); the result is written to
  derived_schema_path(settings, its text) for ImportSchemaGen, and the path
  returned
  (the curated file itself when its domain already fits the list).
  No label list needs a hand-written schema.
  """
  schema = tfdv.load_schema_text(settings.schema_path)
  label = tfdv.get_feature(schema, features.LABEL_KEY)
  if (label.int_domain.min, label.int_domain.max) == (
      0, len(settings.labels) - 1):
    return settings.schema_path  # Already the list's domain: nothing to write.
  label.int_domain.min = 0
  label.int_domain.max = len(settings.labels) - 1
  label.int_domain.is_categorical = True
  text = text_format.MessageToString(schema)
  path = derived_schema_path(settings, text)
  if not tf.io.gfile.exists(path):  # Same content, same path: cached.
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(text)
  return path


def create_pipeline(settings: configs.Settings, ingest_only: bool = False,
                    orchestrator: str = LOCAL) -> tfx.dsl.Pipeline:
  """The whole pipeline for one data root, layout and output home.

  Args:
    settings: every value the pipeline uses.
    ingest_only: stop after data validation (ingestion, statistics, schema
      and drift checks, data charts): ``skinlesion ingest``.  Both share node
      ids, so a full run reuses an ingest run's cached outputs.
    orchestrator: LOCAL: the pipeline uses the SQLite ML Metadata store under
      ``settings.home``; the Trainer's container resources do not apply.
      KUBEFLOW: Kubeflow / Vertex AI record the runs in their own metadata
      service (no store is named); the Trainer's container gets the
      resources of ``trainer_resources(settings)``.
  """
  if orchestrator not in (LOCAL, KUBEFLOW):
    raise ValueError(f'orchestrator must be {LOCAL!r} or {KUBEFLOW!r}, got '
                     f'{orchestrator!r}')
  resolve_auto_labels(settings)
  schema_path = (derive_schema(settings) if orchestrator == LOCAL
                 else settings.schema_path)  # kubeflow_runner derives it.
  example_gen = image_example_gen.ImageExampleGen(
      input_base=settings.data_root, layout=settings.layout,
      labels=settings.labels, split_buckets=settings.split_buckets,
      require_every_class_in_every_split=(
          settings.require_every_class_in_every_split),
      label_map=settings.effective_label_map,
      max_pixels=configs.MAX_IMAGE_PIXELS,
      max_quarantine_fraction=settings.max_quarantine_fraction,
      span_folder=settings.span_folder)

  # The curated schema from the repository, not one re-inferred per run.
  schema_gen = tfx.components.ImportSchemaGen(
      schema_file=schema_path)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      stats_options=tfdv.StatsOptions(enable_semantic_domain_stats=True))
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'])
  # Drift baseline: the statistics of the latest run whose data passed the
  # gate (a previous span), never this run's own.
  # (KubeflowV2DagRunner compiles only TFX's two built-in strategies; Vertex's
  # resolver yields no artifact rather than an error when there is none.
  # Locally, LatestArtifactStrategy fails on a first run, hence our own.)
  baseline_statistics = tfx.dsl.Resolver(
      strategy_class=(anomalies_gate.LatestOrNoneStrategy
                      if orchestrator == LOCAL
                      else tfx.dsl.experimental.LatestArtifactStrategy),
      statistics=tfx.dsl.Channel(
          type=tfx.types.standard_artifacts.ExampleStatistics,
          producer_component_id='AnomaliesGate',
          output_key=anomalies_gate.VALIDATED_STATISTICS_KEY),
  ).with_id('previous_validated_statistics')
  gate = anomalies_gate.AnomaliesGate(
      examples=example_gen.outputs['examples'],
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'],
      anomalies=example_validator.outputs['anomalies'],
      baseline_statistics=baseline_statistics.outputs['statistics'],
      max_categorical_drift=settings.max_categorical_drift,
      max_age_drift=settings.max_age_drift)
  data_report = data_report_lib.DataReport(
      statistics=statistics_gen.outputs['statistics'],
      examples=example_gen.outputs['examples'])
  components: List = [example_gen, schema_gen, statistics_gen,
                      example_validator, baseline_statistics, gate,
                      data_report]
  if ingest_only:
    return _pipeline(settings, components, orchestrator)

  # Locally TFX packages models/ as a wheel (module_file); in the container
  # image the project is installed, so run_fn is imported from there.
  code = ({'run_fn': settings.trainer_run_fn} if settings.trainer_run_fn
          else {'module_file': TRAINER_MODULE_FILE})
  # Tuning (off by default): KerasTuner in TFX's Tuner component
  # (models/tuner.py: tuner_fn, installed or packaged like run_fn); the
  # Trainer takes its best hyperparameters.
  tuner = None
  if settings.tuner_trials > 0:
    tuner_code = ({'tuner_fn': configs.INSTALLED_TUNER_FN}
                  if settings.trainer_run_fn
                  else {'module_file': TUNER_MODULE_FILE})
    tuner = tfx.components.Tuner(
        examples=example_gen.outputs['examples'],
        schema=schema_gen.outputs['schema'],
        train_args=tfx.proto.TrainArgs(splits=[configs.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[configs.EVAL_SPLIT]),
        custom_config=settings.trainer_config(),
        **tuner_code)
    tuner.add_upstream_node(gate)
  trainer = tfx.components.Trainer(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(splits=[configs.TRAIN_SPLIT]),
      eval_args=tfx.proto.EvalArgs(splits=[configs.EVAL_SPLIT]),
      custom_config=settings.trainer_config(),
      hyperparameters=(tuner.outputs['best_hyperparameters'] if tuner
                       else None),
      **code)
  # Training waits for the gate; a failing gate stops the run.  (The schema
  # comes from ImportSchemaGen, not the gate, so the Trainer's cache survives
  # the gate re-checking drift against a newer baseline on every run.)
  trainer.add_upstream_node(gate)
  if orchestrator == KUBEFLOW:
    resources = trainer_resources(settings)
    if resources is not None:
      trainer.with_platform_config(resources)

  # The regression baseline: the latest model the Evaluator blessed (only
  # the Evaluator's blessings: the IntervalGate writes ModelBlessings too)
  # other than the candidate (on a rerun the cached Trainer's model is the
  # one the first run blessed; it must not be its own baseline).  KubeflowV2DagRunner compiles only TFX's
  # built-in strategies: there the MobilePusher's lineage check keeps a
  # rerun from pushing the same model again.
  baseline_channels = dict(
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(
          type=tfx.types.standard_artifacts.ModelBlessing,
          producer_component_id='Evaluator', output_key='blessing'))
  if orchestrator == LOCAL:
    model_resolver = tfx.dsl.Resolver(
        strategy_class=baseline_model.LatestBlessedOtherModelStrategy,
        candidate=trainer.outputs['model'], **baseline_channels)
  else:
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        **baseline_channels)
  model_resolver = model_resolver.with_id('latest_blessed_model_resolver')

  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=model_resolver.outputs['model'],
      eval_config=build_eval_config(settings),
      example_splits=[configs.TEST_SPLIT])

  settings.validate_gates()
  if settings.subgroup_gap_metric == interval_gate.MELANOMA_RECALL:
    melanoma_class_id(settings)  # A clear error when there is no melanoma.
  model_gates = interval_gate.IntervalGate(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=model_resolver.outputs['model'],
      split=configs.TEST_SPLIT,
      max_balanced_accuracy_drop=settings.max_balanced_accuracy_drop,
      **interval_gate_scoring(settings))

  exporter = mobile_exporter.MobileExporter(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      examples=example_gen.outputs['examples'],
      labels=list(settings.labels),
      label_descriptions=[configs.LABEL_DISPLAY_NAMES.get(n, n)
                          for n in settings.labels],
      image_size=settings.image_size,
      formats=list(configs.TFLITE_FORMATS),
      representative_split=configs.TRAIN_SPLIT,
      representative_examples=settings.tflite_representative_examples,
      seed=settings.seed,
      parity_split=configs.TEST_SPLIT,
      min_top1_agreement=settings.tflite_min_top1_agreement,
      max_balanced_accuracy_drop=settings.tflite_max_balanced_accuracy_drop,
      model_name=settings.pipeline_name,
      author=configs.MODEL_AUTHOR,
      licenses=configs.MODEL_LICENSE)
  pusher = mobile_pusher.MobilePusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      mobile_models=exporter.outputs['mobile_models'],
      gate_blessing=model_gates.outputs['blessing'],
      evaluation=evaluator.outputs['evaluation'],
      base_directory=settings.serving_model_dir)

  # Last: the run report and model card.  It runs whether or not the model
  # was blessed: the pusher marks an unblessed model not pushed (it still
  # runs), and the exporter's and pusher's outputs are optional inputs, so a
  # run whose pusher was skipped still gets a report saying so.
  reporter = run_report.RunReporter(
      examples=example_gen.outputs['examples'],
      evaluation=evaluator.outputs['evaluation'],
      blessing=evaluator.outputs['blessing'],
      model=trainer.outputs['model'],
      statistics=statistics_gen.outputs['statistics'],
      anomalies=example_validator.outputs['anomalies'],
      charts=data_report.outputs['charts'],
      model_run=trainer.outputs['model_run'],
      mobile_models=exporter.outputs['mobile_models'],
      pushed_model=pusher.outputs['pushed_model'],
      gate_blessing=model_gates.outputs['blessing'],
      pipeline_name=settings.pipeline_name,
      split=configs.TEST_SPLIT,
      gradcam_per_class=settings.report_gradcam_per_class,
      melanoma_label=settings.melanoma_class)

  components += ([tuner] if tuner else []) + [
      trainer, model_resolver, evaluator, model_gates, exporter, pusher,
      reporter]
  return _pipeline(settings, components, orchestrator)


def _pipeline(settings: configs.Settings, components: List,
              orchestrator: str) -> tfx.dsl.Pipeline:
  return tfx.dsl.Pipeline(
      pipeline_name=settings.pipeline_name,
      pipeline_root=settings.pipeline_root,
      components=components,
      enable_cache=settings.enable_cache,
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              settings.metadata_path) if orchestrator == LOCAL else None),
      beam_pipeline_args=settings.beam_pipeline_args)
