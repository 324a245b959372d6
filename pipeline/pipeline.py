"""The skin-lesion TFX pipeline: wiring only; every value comes from Settings.

ImageExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator ->
AnomaliesGate -> Trainer -> Evaluator (vs the latest blessed model) ->
MobileExporter (.tflite formats, parity gate) -> MobilePusher (one atomic
version directory: SavedModel, passing .tflite files, labels, manifest).
"""

import json
import os
from typing import List

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components import anomalies_gate
from components import image_example_gen
from components import mobile_exporter
from components import mobile_pusher
from components import tfma_metrics
from models import features
from pipeline import configs

# The Trainer's module file: models/trainer.py.  TFX packages the whole
# models/ folder, so any model-code edit invalidates the Trainer's cache.
TRAINER_MODULE_FILE = os.path.join(configs.PROJECT_ROOT, 'models',
                                   'trainer.py')

# Names of the TFMA metrics the gates read.
BALANCED_ACCURACY = tfma_metrics.BALANCED_ACCURACY_NAME


def build_eval_config(settings: configs.Settings) -> tfma.EvalConfig:
  """TFMA config: metrics per class and slice, and the blessing thresholds.

  Per-class recall counts a class's examples whose top-1 prediction is that
  class; balanced accuracy (a custom TFMA metric) is their mean.  The gate
  applies to the overall slice only: small slices would fail any
  bound by chance.
  """
  class_ids = list(range(len(settings.labels)))
  overall = [tfma.SlicingSpec()]
  gate = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={'value': settings.min_balanced_accuracy}),
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={'value': -settings.max_balanced_accuracy_drop}))
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name=features.EXAMPLE_SIGNATURE,
          label_key=features.LABEL_KEY,
          prediction_key=features.PREDICTION_KEY)],
      slicing_specs=[
          tfma.SlicingSpec(),
          tfma.SlicingSpec(feature_keys=[features.LABEL_KEY]),
          tfma.SlicingSpec(feature_keys=[features.SEX_KEY]),
      ],
      metrics_specs=[
          tfma.MetricsSpec(metrics=[
              tfma.MetricConfig(class_name='ExampleCount'),
              tfma.MetricConfig(class_name='SparseCategoricalAccuracy',
                                config='{"name": "accuracy"}'),
              tfma.MetricConfig(class_name='MultiClassConfusionMatrixPlot'),
          ]),
          # Top-1 recall per class (one sub key per class id).
          tfma.MetricsSpec(metrics=[tfma.MetricConfig(
              class_name='ClassRecall', module=tfma_metrics.__name__,
              config=json.dumps({'class_ids': class_ids}))]),
          # Balanced accuracy (mean per-class recall), the gated metric.
          tfma.MetricsSpec(metrics=[tfma.MetricConfig(
              class_name='BalancedAccuracy', module=tfma_metrics.__name__,
              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                  slicing_specs=overall, threshold=gate)])]),
      ])


def create_pipeline(settings: configs.Settings) -> tfx.dsl.Pipeline:
  """The whole pipeline for one data root, layout and output home."""
  example_gen = image_example_gen.ImageExampleGen(
      input_base=settings.data_root, layout=settings.layout,
      labels=settings.labels, split_buckets=configs.SPLIT_BUCKETS)

  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'],
      stats_options=tfdv.StatsOptions(enable_semantic_domain_stats=True))
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'],
      infer_feature_shape=True)
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'])
  gate = anomalies_gate.AnomaliesGate(
      anomalies=example_validator.outputs['anomalies'])

  trainer = tfx.components.Trainer(
      module_file=TRAINER_MODULE_FILE,
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(splits=[configs.TRAIN_SPLIT]),
      eval_args=tfx.proto.EvalArgs(splits=[configs.EVAL_SPLIT]),
      custom_config=settings.trainer_config())
  trainer.add_upstream_node(gate)

  model_resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(
          type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id('latest_blessed_model_resolver')

  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=model_resolver.outputs['model'],
      eval_config=build_eval_config(settings),
      example_splits=[configs.TEST_SPLIT])

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
      base_directory=settings.serving_model_dir)

  components: List = [example_gen, statistics_gen, schema_gen,
                      example_validator, gate, trainer, model_resolver,
                      evaluator, exporter, pusher]
  return tfx.dsl.Pipeline(
      pipeline_name=settings.pipeline_name,
      pipeline_root=settings.pipeline_root,
      components=components,
      enable_cache=settings.enable_cache,
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              settings.metadata_path)),
      beam_pipeline_args=settings.beam_pipeline_args)
