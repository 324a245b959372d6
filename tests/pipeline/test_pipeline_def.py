"""Pipeline wiring and the TFMA configuration built from the settings."""

import json

import pytest
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma

from components import tfma_metrics
from pipeline import configs
from pipeline import pipeline as pipeline_lib


def _pipeline(tmp_path, **overrides):
  settings = configs.Settings(data_root=str(tmp_path), home=str(tmp_path / 'h'),
                              **overrides)
  return settings, pipeline_lib.create_pipeline(settings)


def test_components_and_order(tmp_path):
  _, p = _pipeline(tmp_path)
  ids = {c.id for c in p.components}  # TFX sorts them topologically.
  assert ids == {'ImageExampleGen', 'ImportSchemaGen', 'StatisticsGen',
                 'ExampleValidator', 'previous_validated_statistics',
                 'AnomaliesGate', 'DataReport', 'Trainer',
                 'latest_blessed_model_resolver', 'Evaluator',
                 'IntervalGate', 'MobileExporter', 'MobilePusher',
                 'RunReporter'}
  by_id = {c.id: c for c in p.components}
  # Training waits for the anomalies gate; conversion and pushing wait for
  # the blessing; pushing waits for the parity verdicts.
  assert 'AnomaliesGate' in {n.id for n in by_id['Trainer'].upstream_nodes}
  assert 'Evaluator' in {n.id for n in by_id['MobileExporter'].upstream_nodes}
  assert {'Evaluator', 'IntervalGate', 'MobileExporter'} <= {
      n.id for n in by_id['MobilePusher'].upstream_nodes}
  assert by_id['MobilePusher'].exec_properties[
      'require_gate_blessing'] == 1
  # The IntervalGate scores the candidate and the regression baseline.
  assert {'Trainer', 'ImageExampleGen', 'latest_blessed_model_resolver'} <= {
      n.id for n in by_id['IntervalGate'].upstream_nodes}
  # The regression baseline: only the Evaluator's blessings count.
  blessing_channel = by_id['latest_blessed_model_resolver'].raw_inputs[
      'model_blessing']
  assert (blessing_channel.producer_component_id,
          blessing_channel.output_key) == ('Evaluator', 'blessing')
  assert by_id['Evaluator'].exec_properties['example_splits'] == '["test"]'
  # The report comes last and reads what every stage wrote.
  assert {'ImageExampleGen', 'StatisticsGen', 'ExampleValidator',
          'DataReport', 'Trainer', 'Evaluator', 'MobileExporter',
          'MobilePusher'} <= {n.id for n in by_id['RunReporter'].upstream_nodes}


def test_report_runs_without_the_pushers_outputs(tmp_path):
  """A run whose exporter or pusher did not run still gets its report."""
  _, p = _pipeline(tmp_path)
  reporter = {c.id: c for c in p.components}['RunReporter']
  spec = reporter.spec.INPUTS
  for key in ('mobile_models', 'pushed_model', 'gate_blessing', 'charts',
              'statistics', 'anomalies', 'model_run'):
    assert spec[key].optional, key
  for key in ('examples', 'evaluation', 'blessing', 'model'):
    assert not spec[key].optional, key
  assert reporter.outputs['report'].type_name == 'components.RunReport'


def test_ingest_only_stops_after_validation(tmp_path):
  settings = configs.Settings(data_root=str(tmp_path))
  p = pipeline_lib.create_pipeline(settings, ingest_only=True)
  assert {c.id for c in p.components} == {
      'ImageExampleGen', 'ImportSchemaGen', 'StatisticsGen', 'ExampleValidator',
      'previous_validated_statistics', 'AnomaliesGate', 'DataReport'}


def test_schema_label_domain_is_derived_from_the_label_list(tmp_path):
  settings, p = _pipeline(tmp_path, labels=('a', 'b', 'c'))
  schema_file = {c.id: c for c in p.components}[
      'ImportSchemaGen'].exec_properties['schema_file']
  with open(schema_file) as f:
    assert schema_file == pipeline_lib.derived_schema_path(settings, f.read())
  assert schema_file.startswith(settings.home)
  domain = tfdv.get_feature(tfdv.load_schema_text(schema_file),
                            'label').int_domain
  assert (domain.min, domain.max) == (0, 2)


def test_mobile_export_settings_flow_into_its_components(tmp_path):
  settings, p = _pipeline(tmp_path, image_size=96,
                          tflite_representative_examples=64,
                          tflite_min_top1_agreement=0.97,
                          tflite_max_balanced_accuracy_drop=0.02)
  by_id = {c.id: c for c in p.components}
  exporter = by_id['MobileExporter'].exec_properties
  assert json.loads(exporter['formats']) == ['float16', 'int8']
  assert json.loads(exporter['labels']) == list(configs.LABELS)
  assert exporter['image_size'] == 96
  assert exporter['representative_examples'] == 64
  assert exporter['representative_split'] == configs.TRAIN_SPLIT
  assert exporter['parity_split'] == configs.TEST_SPLIT
  assert exporter['min_top1_agreement'] == 0.97
  assert exporter['max_balanced_accuracy_drop'] == 0.02
  assert by_id['MobilePusher'].exec_properties['base_directory'] == (
      settings.serving_model_dir)


def test_settings_flow_into_components(tmp_path):
  settings, p = _pipeline(tmp_path, epochs=5, max_quarantine_fraction=0.2)
  by_id = {c.id: c for c in p.components}
  custom = json.loads(by_id['Trainer'].exec_properties['custom_config'])
  assert custom['epochs'] == 5 and 'labels' not in custom  # From the data.
  gen = json.loads(by_id['ImageExampleGen'].exec_properties['custom_config'])
  assert '"max_quarantine_fraction": 0.2' in json.dumps(gen)
  assert '"labels": ["akiec", "bcc"' in json.dumps(gen)
  assert p.pipeline_info.pipeline_root == settings.pipeline_root
  assert '--direct_running_mode=in_memory' in p.beam_pipeline_args


def test_trainer_resources_only_on_kubeflow(tmp_path):
  from tfx.orchestration.local import runner_utils  # pylint: disable=g-import-not-at-top
  from tfx.dsl.compiler import compiler  # pylint: disable=g-import-not-at-top
  resources = dict(trainer_cpu_limit=8, trainer_memory_limit=32,
                   trainer_accelerator_type='NVIDIA_L4',
                   trainer_accelerator_count=2)
  _, local = _pipeline(tmp_path, **resources)
  # What LocalDagRunner does first; it refuses a KFP ResourceSpec.
  runner_utils.extract_local_deployment_config(
      compiler.Compiler().compile(local))
  assert {c.id: c for c in local.components}['Trainer'].platform_config is None
  settings = configs.Settings(data_root=str(tmp_path),
                              home='gs://bucket/home', **resources)
  kubeflow = pipeline_lib.create_pipeline(settings,
                                          orchestrator=pipeline_lib.KUBEFLOW)
  spec = {c.id: c for c in kubeflow.components}['Trainer'].platform_config
  assert (spec.cpu_limit, spec.memory_limit, spec.accelerator.type,
          spec.accelerator.count) == (8, 32, 'NVIDIA_L4', 2)
  assert kubeflow.metadata_connection_config is None
  with pytest.raises(ValueError, match='orchestrator'):
    pipeline_lib.create_pipeline(settings, orchestrator='airflow')


def test_gate_thresholds_apply_to_the_overall_slice_only():
  settings = configs.Settings(min_balanced_accuracy=0.4,
                              max_balanced_accuracy_drop=0.03,
                              min_melanoma_recall=0.6)
  config = pipeline_lib.build_eval_config(settings)
  thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
      config.metrics_specs, config)
  gated = {key.name for key in thresholds}
  assert gated == {tfma_metrics.BALANCED_ACCURACY_NAME,
                   pipeline_lib.MELANOMA_RECALL}
  mel = configs.LABELS.index(configs.MELANOMA_LABEL)
  for key, values in thresholds.items():
    for slice_spec, threshold in values:
      assert slice_spec == tfma.SlicingSpec()
      if key.name == pipeline_lib.MELANOMA_RECALL:
        assert key.sub_key.class_id == mel and not key.is_diff
        assert threshold.lower_bound.value == 0.6
      else:  # No TFMA change threshold: the IntervalGate judges that.
        assert not key.is_diff and threshold.lower_bound.value == 0.4
  slices = [list(s.feature_keys) for s in config.slicing_specs]
  assert slices == [[], ['label'], ['sex'], ['age_band'], ['localization'],
                    ['dataset'], ['sex', 'age_band']]


def test_auc_thresholds_setting_reaches_every_auc():
  for value in (configs.AUC_THRESHOLDS, 1000):
    config = pipeline_lib.build_eval_config(configs.Settings(
        auc_thresholds=value))
    aucs = [json.loads(m.config) for s in config.metrics_specs
            for m in s.metrics if m.class_name == 'AUC']
    assert aucs and all(a['num_thresholds'] == value for a in aucs), aucs
  assert configs.Settings().auc_thresholds == configs.AUC_THRESHOLDS
  with pytest.raises(ValueError, match='auc_thresholds'):
    configs.Settings(auc_thresholds=1).validate()


def test_interval_gate_settings_flow_into_its_component(tmp_path):
  _, p = _pipeline(tmp_path, subgroup_gap_metric='melanoma_recall',
                   max_subgroup_gap=0.12, min_subgroup_examples=17,
                   min_subgroup_class_examples=4,
                   subgroup_gap_exclude_unknown=False,
                   max_balanced_accuracy_drop=0.03, interval_confidence=0.9,
                   bootstrap_draws=500, seed=5)
  gate = {c.id: c for c in p.components}['IntervalGate'].exec_properties
  assert json.loads(gate['slice_families']) == ['sex', 'age_band',
                                                 'localization']
  assert json.loads(gate['slice_features']) == ['sex', 'age_band',
                                                 'localization', 'dataset']
  assert json.loads(gate['labels']) == list(configs.LABELS)
  assert (gate['metric'], gate['melanoma_label'], gate['max_gap'],
          gate['min_examples'], gate['min_class_examples'],
          gate['exclude_unknown'], gate['max_balanced_accuracy_drop'],
          gate['confidence'], gate['draws'], gate['seed'], gate['split']) == (
              'melanoma_recall', 'mel', 0.12, 17, 4, 0, 0.03, 0.9, 500, 5,
              'test')
  with pytest.raises(ValueError, match='subgroup_gap_metric'):
    _pipeline(tmp_path, subgroup_gap_metric='accuracy')
  with pytest.raises(ValueError, match='interval_confidence'):
    _pipeline(tmp_path, interval_confidence=1.0)


def test_tuner_is_off_by_default_and_feeds_the_trainer_when_on(tmp_path):
  _, p = _pipeline(tmp_path)
  assert 'Tuner' not in {c.id for c in p.components}
  _, p = _pipeline(tmp_path, tuner_trials=3)
  by_id = {c.id: c for c in p.components}
  assert 'AnomaliesGate' in {n.id for n in by_id['Tuner'].upstream_nodes}
  assert 'Tuner' in {n.id for n in by_id['Trainer'].upstream_nodes}
  assert (by_id['Trainer'].inputs['hyperparameters'].producer_component_id
          == 'Tuner')
  assert json.loads(by_id['Tuner'].exec_properties['custom_config'])[
      'tuner_trials'] == 3
  # In the container image both entry points are imported, not packaged.
  _, p = _pipeline(tmp_path, tuner_trials=1,
                   trainer_run_fn=configs.INSTALLED_TRAINER_RUN_FN)
  tuner = {c.id: c for c in p.components}['Tuner']
  assert tuner.exec_properties['tuner_fn'] == configs.INSTALLED_TUNER_FN
