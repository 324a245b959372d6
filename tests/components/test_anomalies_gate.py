"""AnomaliesGate on anomalies computed by TFDV itself."""

import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.components.example_validator import executor as validator_executor
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import anomalies_gate


def _anomalies_artifact(tmp_path, split_frames, schema):
  artifact = standard_artifacts.ExampleAnomalies()
  artifact.uri = str(tmp_path / 'anomalies')
  artifact.split_names = artifact_utils.encode_split_names(list(split_frames))
  for split, frame in split_frames.items():
    stats = tfdv.generate_statistics_from_dataframe(frame)
    anomalies = tfdv.validate_statistics(stats, schema)
    directory = artifact_utils.get_split_uri([artifact], split)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, validator_executor.DEFAULT_FILE_NAME),
              'wb') as f:
      f.write(anomalies.SerializeToString())
  return artifact


def _schema():
  good = pd.DataFrame({'sex': ['male', 'female'] * 10, 'age': [40.0] * 20})
  schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(good))
  return schema


def test_clean_data_passes(tmp_path):
  clean = pd.DataFrame({'sex': ['female', 'male'] * 5, 'age': [50.0] * 10})
  artifact = _anomalies_artifact(tmp_path, {'train': clean}, _schema())
  assert anomalies_gate.find_anomalies(artifact) == {}
  executor = anomalies_gate.AnomaliesGate.EXECUTOR_SPEC.executor_class()
  executor.Do({'anomalies': [artifact]}, {}, {})  # Does not raise.


def test_anomalies_stop_the_run_and_are_named(tmp_path):
  clean = pd.DataFrame({'sex': ['female', 'male'] * 5, 'age': [50.0] * 10})
  bad = pd.DataFrame({'sex': ['female', 'robot'] * 5})  # New value, no age.
  artifact = _anomalies_artifact(tmp_path, {'train': clean, 'eval': bad},
                                 _schema())
  found = anomalies_gate.find_anomalies(artifact)
  assert list(found) == ['eval']
  text = '\n'.join(found['eval'])
  assert 'sex' in text and 'age' in text
  executor = anomalies_gate.AnomaliesGate.EXECUTOR_SPEC.executor_class()
  with pytest.raises(anomalies_gate.DataAnomaliesError) as error:
    executor.Do({'anomalies': [artifact]}, {}, {})
  message = str(error.value)
  assert 'stops before training' in message
  assert '[eval] sex' in message and '[eval] age' in message
