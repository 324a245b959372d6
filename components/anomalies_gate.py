"""AnomaliesGate: stops the run before training when the data has anomalies.

ExampleValidator records anomalies (and a per-split ``blessed`` property) but
does not stop a pipeline.  This component reads its output and fails, with a
message naming each anomalous feature, split and the anomaly, so nothing
downstream (the Trainer is made to depend on it) runs on bad data.
"""

import os
from typing import Dict, List

from tensorflow_data_validation.utils import anomalies_util
from tfx import types
from tfx.components.example_validator import executor as validator_executor
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts


class DataAnomaliesError(RuntimeError):
  """The validated data has anomalies; the message lists them."""


def find_anomalies(anomalies: types.Artifact) -> Dict[str, List[str]]:
  """split name -> ['feature: short description (description)', ...]."""
  found = {}
  for split in artifact_utils.decode_split_names(anomalies.split_names):
    path = os.path.join(artifact_utils.get_split_uri([anomalies], split),
                        validator_executor.DEFAULT_FILE_NAME)
    proto = anomalies_util.load_anomalies_binary(path)
    messages = []
    for feature, info in sorted(proto.anomaly_info.items()):
      messages.append(f'{feature}: {info.short_description} '
                      f'({info.description})')
    if proto.HasField('dataset_anomaly_info'):
      info = proto.dataset_anomaly_info
      messages.append(f'<dataset>: {info.short_description} '
                      f'({info.description})')
    if messages:
      found[split] = messages
  return found


@component
def AnomaliesGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
  """Fails when ExampleValidator found any anomaly in any split."""
  found = find_anomalies(anomalies)
  if found:
    lines = [f'  [{split}] {message}' for split, messages in found.items()
             for message in messages]
    raise DataAnomaliesError(
        'Data validation failed; the run stops before training. Anomalies '
        f'(from {anomalies.uri}):\n' + '\n'.join(lines))
