"""AnomaliesGate on anomalies and drift computed by TFDV itself."""

import os

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.components.example_validator import executor as validator_executor
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import anomalies_gate
from models import features


def _schema():
  frame = pd.DataFrame({'label': [0, 1, 2] * 10, 'sex': ['male', 'female'] * 15,
                        'localization': ['back'] * 30, 'age': [40.0] * 30})
  schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(frame))
  tfdv.get_feature(schema, 'label').int_domain.is_categorical = True
  return schema


def _frame(n, label_p, seed=0, sex=('male', 'female')):
  rng = np.random.default_rng(seed)
  return pd.DataFrame({
      'label': rng.choice(3, size=n, p=label_p),
      'sex': rng.choice(sex, size=n),
      'localization': ['back'] * n,
      'age': rng.normal(50, 12, size=n).round(),
  })


def _stats_artifact(tmp_path, name, frames, schema):
  artifact = standard_artifacts.ExampleStatistics()
  artifact.uri = str(tmp_path / name)
  artifact.split_names = artifact_utils.encode_split_names(list(frames))
  artifact.span = 1
  for split, frame in frames.items():
    stats = tfdv.generate_statistics_from_dataframe(
        frame, stats_options=tfdv.StatsOptions(schema=schema))
    directory = artifact_utils.get_split_uri([artifact], split)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, anomalies_gate.STATS_FILE), 'wb') as f:
      f.write(stats.SerializeToString())
  return artifact


def _anomalies_artifact(tmp_path, statistics, schema):
  artifact = standard_artifacts.ExampleAnomalies()
  artifact.uri = str(tmp_path / 'anomalies')
  artifact.split_names = statistics.split_names
  for split in artifact_utils.decode_split_names(statistics.split_names):
    stats = tfdv.load_stats_binary(os.path.join(
        artifact_utils.get_split_uri([statistics], split),
        anomalies_gate.STATS_FILE))
    directory = artifact_utils.get_split_uri([artifact], split)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, validator_executor.DEFAULT_FILE_NAME),
              'wb') as f:
      f.write(tfdv.validate_statistics(stats, schema).SerializeToString())
  return artifact


def _schema_artifact(tmp_path, schema):
  artifact = standard_artifacts.Schema()
  artifact.uri = str(tmp_path / 'schema')
  os.makedirs(artifact.uri)
  tfdv.write_schema_text(schema, os.path.join(artifact.uri,
                                              anomalies_gate.SCHEMA_FILE))
  return artifact


LABELS = ('a', 'b', 'c')


def _examples_artifact(tmp_path, labels=LABELS):
  artifact = standard_artifacts.Examples()
  artifact.uri = str(tmp_path / 'examples' / '_'.join(labels))
  os.makedirs(artifact.uri, exist_ok=True)
  with open(os.path.join(artifact.uri, features.LABELS_FILE), 'w') as f:
    f.write('\n'.join(labels) + '\n')
  return artifact


def _run_gate(tmp_path, statistics, schema, baseline=None, labels=LABELS):
  outputs = {'validated_statistics': [standard_artifacts.ExampleStatistics()],
             'validated_schema': [standard_artifacts.Schema()],
             'drift_anomalies': [standard_artifacts.ExampleAnomalies()]}
  for key, (artifact,) in outputs.items():
    artifact.uri = str(tmp_path / 'out' / key)
  inputs = {'examples': [_examples_artifact(tmp_path, labels)],
            'statistics': [statistics],
            'schema': [_schema_artifact(tmp_path, schema)],
            'anomalies': [_anomalies_artifact(tmp_path, statistics, schema)],
            'baseline_statistics': [baseline] if baseline else []}
  executor = anomalies_gate.AnomaliesGate.EXECUTOR_SPEC.executor_class()
  executor.Do(inputs, outputs, {'max_categorical_drift': 0.1,
                                'max_age_drift': 0.1})
  return outputs


P = [0.6, 0.3, 0.1]


def test_clean_first_span_passes_and_is_republished(tmp_path):
  schema = _schema()
  stats = _stats_artifact(tmp_path, 'stats', {'train': _frame(300, P)}, schema)
  outputs = _run_gate(tmp_path, stats, schema)
  validated = outputs['validated_statistics'][0]
  assert validated.split_names == stats.split_names and validated.span == 1
  assert os.path.exists(os.path.join(
      artifact_utils.get_split_uri([validated], 'train'),
      anomalies_gate.STATS_FILE))
  assert os.path.exists(os.path.join(outputs['validated_schema'][0].uri,
                                     anomalies_gate.SCHEMA_FILE))
  # The label list travels with the statistics: the next span's baseline.
  assert anomalies_gate.labels_of(validated.uri) == list(LABELS)


@pytest.mark.parametrize('labels, change', [
    (('a', 'b', 'c', 'd'), "added ['d']"),
    (('a', 'b'), "removed ['c']"),
    (('a', 'c', 'x'), "added ['x']; removed ['b']"),
    (('c', 'b', 'a'), 'same classes in another order')])
def test_a_changed_label_set_is_a_drift_anomaly_naming_the_change(
    tmp_path, labels, change):
  schema = _schema()
  frames = {'train': _frame(300, P, 1), 'eval': _frame(100, P, 3)}
  base = _run_gate(tmp_path / 'span1', _stats_artifact(
      tmp_path, 'base', frames, schema), schema)['validated_statistics'][0]
  # Same statistics (no distribution drift at all), another label list.
  new = _stats_artifact(tmp_path, 'new', frames, schema)
  _run_gate(tmp_path / 'same', new, schema, baseline=base)  # Same list: fine.
  with pytest.raises(anomalies_gate.DataAnomaliesError) as error:
    _run_gate(tmp_path / 'span2', new, schema, baseline=base, labels=labels)
  message = str(error.value)
  for split in frames:
    assert f'drift [{split}] label: Label set changed' in message, message
  assert change in message and str(list(LABELS)) in message
  assert 'another --home' in message
  # Recorded in the drift anomalies artifact, as TFDV's own drift is.
  with open(os.path.join(tmp_path, 'span2', 'out', 'drift_anomalies',
                         'Split-train', validator_executor.DEFAULT_FILE_NAME),
            'rb') as f:
    recorded = anomalies_pb2.Anomalies.FromString(f.read())
  assert list(recorded.anomaly_info) == ['label']
  assert recorded.anomaly_info['label'].short_description == (
      'Label set changed')


def test_same_mix_in_a_new_span_is_not_drift(tmp_path):
  schema = _schema()
  base = _stats_artifact(tmp_path, 'base', {'train': _frame(400, P, 1)}, schema)
  new = _stats_artifact(tmp_path, 'new', {'train': _frame(400, P, 2)}, schema)
  assert anomalies_gate.find_drift(new, base, schema, 0.1, 0.1) == {}
  _run_gate(tmp_path, new, schema, baseline=base)  # Does not raise.


def test_shifted_label_mix_is_drift_and_stops_the_run(tmp_path):
  schema = _schema()
  base = _stats_artifact(tmp_path, 'base', {'train': _frame(400, P, 1)}, schema)
  new = _stats_artifact(tmp_path, 'new',
                        {'train': _frame(400, [0.2, 0.3, 0.5], 2)}, schema)
  found = anomalies_gate.find_drift(new, base, schema, 0.1, 0.1)
  assert list(found) == ['train']
  assert any(m.startswith('label:') for m in found['train'])
  assert not any(m.startswith('sex:') for m in found['train'])
  with pytest.raises(anomalies_gate.DataAnomaliesError) as error:
    _run_gate(tmp_path, new, schema, baseline=base)
  assert 'drift [train] label' in str(error.value)
  assert 'stops before training' in str(error.value)


def test_schema_anomalies_stop_the_run_and_are_named(tmp_path):
  schema = _schema()
  bad = _frame(50, P, sex=('male', 'robot')).drop(columns=['age'])
  stats = _stats_artifact(tmp_path, 'stats', {'train': _frame(50, P),
                                              'eval': bad}, schema)
  with pytest.raises(anomalies_gate.DataAnomaliesError) as error:
    _run_gate(tmp_path, stats, schema)
  message = str(error.value)
  assert 'schema [eval] sex' in message and 'schema [eval] age' in message
  assert '[train]' not in message


def test_no_baseline_resolves_to_nothing_not_an_error():
  strategy = anomalies_gate.LatestOrNoneStrategy()
  assert strategy.resolve_artifacts(None, {'statistics': []}) == {
      'statistics': []}
  a, b = standard_artifacts.ExampleStatistics(), \
      standard_artifacts.ExampleStatistics()
  a.id, b.id = 3, 7
  assert strategy.resolve_artifacts(None, {'statistics': [b, a]}) == {
      'statistics': [b]}
