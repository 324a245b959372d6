"""AnomaliesGate: stops the run before training on bad or drifted data.

ExampleValidator records schema anomalies but does not stop a pipeline.  This
component reads them, checks drift against the previous validated span, and
fails with a message that names every anomalous feature, split and problem.

Drift uses TFDV's own comparators (``validate_statistics`` with
``previous_statistics``): L-infinity distance on the label, sex and
localization distributions and Jensen-Shannon divergence on age, with the
thresholds of the settings.  The baseline is the statistics of the latest run
whose data passed this gate (its ``validated_statistics`` output, resolved by
``LatestOrNoneStrategy``), so a drifted delivery cannot become its own
baseline by being rerun.  On the first span there is no baseline and only the
schema is checked.  (TFX's DistributionValidator needs a baseline input: on a
first span it does not run at all, and LocalDagRunner then skips whatever
depends on it without failing the run; hence drift is checked here.)

The label list is drift too: the int64 labels index the list ingestion wrote
into the Examples artifact (``labels.txt``), so when a span's list differs
from the baseline's (a class added, removed or renamed, say by ``--labels
auto`` on a new delivery), label indices stop meaning the same classes and
models of the two lists cannot be compared.  That is reported as a drift
anomaly on ``label`` naming the classes added and removed (the label
distribution is then not compared), and the run stops; a new label list
starts a new pipeline (another ``--home`` or pipeline name).

When the data passes, the gate republishes the statistics (the next drift
baseline, with the label list beside them) and the schema.  The gate runs on every run (its baseline moves),
so the Trainer depends on it by order, not by data: a data dependency would
retrain the model on every rerun.
"""

import os
from typing import Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import anomalies_util
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import types
from tfx.components.example_validator import executor as validator_executor
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.common import resolver
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from models import features
from models import preprocessing

VALIDATED_STATISTICS_KEY = 'validated_statistics'
SCHEMA_FILE = 'schema.pbtxt'
STATS_FILE = 'FeatureStats.pb'
CATEGORICAL_DRIFT_FEATURES = (features.LABEL_KEY, features.SEX_KEY,
                              features.LOCALIZATION_KEY)
NUMERIC_DRIFT_FEATURES = (features.AGE_KEY,)


class DataAnomaliesError(RuntimeError):
  """The validated data has anomalies; the message lists them."""


class LatestOrNoneStrategy(resolver.ResolverStrategy):
  """The latest artifact of each channel, or nothing (not an error) if none."""

  def resolve_artifacts(self, store, input_dict):
    del store
    return {key: sorted(artifacts, key=lambda a: a.id)[-1:]
            for key, artifacts in input_dict.items()}


def _messages(proto: anomalies_pb2.Anomalies) -> List[str]:
  messages = [f'{feature}: {info.short_description} ({info.description})'
              for feature, info in sorted(proto.anomaly_info.items())]
  if proto.HasField('dataset_anomaly_info'):
    info = proto.dataset_anomaly_info
    messages.append(f'<dataset>: {info.short_description} '
                    f'({info.description})')
  return messages


def find_anomalies(anomalies: types.Artifact) -> Dict[str, List[str]]:
  """split -> ['feature: short description (description)', ...]."""
  found = {}
  for split in artifact_utils.decode_split_names(anomalies.split_names):
    path = os.path.join(artifact_utils.get_split_uri([anomalies], split),
                        validator_executor.DEFAULT_FILE_NAME)
    if not tf.io.gfile.exists(path):
      continue
    messages = _messages(anomalies_util.load_anomalies_binary(path))
    if messages:
      found[split] = messages
  return found


def _load_stats(artifact: types.Artifact, split: str):
  return tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([artifact], split), STATS_FILE))


def drift_schema(schema: schema_pb2.Schema, max_categorical_drift: float,
                 max_age_drift: float,
                 categorical: Sequence[str] = CATEGORICAL_DRIFT_FEATURES
                 ) -> schema_pb2.Schema:
  """A copy of the schema with the drift comparators set."""
  schema = schema_pb2.Schema.FromString(schema.SerializeToString())
  for name in categorical:
    tfdv.get_feature(schema, name).drift_comparator.infinity_norm.threshold = (
        max_categorical_drift)
  for name in NUMERIC_DRIFT_FEATURES:
    feature = tfdv.get_feature(schema, name)
    feature.drift_comparator.jensen_shannon_divergence.threshold = (
        max_age_drift)
  return schema


def labels_of(directory: str) -> Optional[List[str]]:
  """The label list in directory (an Examples artifact, or validated
  statistics); None when it has none (statistics of an older release)."""
  path = os.path.join(directory, features.LABELS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  return preprocessing.read_label_file(path)


def label_set_change(baseline: Optional[Sequence[str]],
                     labels: Sequence[str]) -> Optional[str]:
  """Why the label list is not the baseline's; None when it is (or the
  baseline has none to compare)."""
  if baseline is None or list(baseline) == list(labels):
    return None
  added = [name for name in labels if name not in baseline]
  removed = [name for name in baseline if name not in labels]
  change = '; '.join(part for part in (
      f'added {added}' if added else '', f'removed {removed}' if removed else '',
      '' if added or removed else 'same classes in another order') if part)
  return (f"the baseline span's {list(baseline)} became {list(labels)}: "
          f'{change}. Label indices no longer name the same classes, so the '
          'label distribution is not compared and models of the two lists '
          'cannot be; start a new pipeline (another --home) for the new list, '
          'or restore the old one')


def find_drift(statistics: types.Artifact, baseline: types.Artifact,
               schema: schema_pb2.Schema, max_categorical_drift: float,
               max_age_drift: float, out: Optional[types.Artifact] = None,
               label_change: Optional[str] = None) -> Dict[str, List[str]]:
  """split -> drift messages, for each split both statistics have.

  label_change: label_set_change's message, reported on every split instead
  of comparing the label distributions.
  """
  categorical = [name for name in CATEGORICAL_DRIFT_FEATURES
                 if not (label_change and name == features.LABEL_KEY)]
  comparator = drift_schema(schema, max_categorical_drift, max_age_drift,
                            categorical)
  found = {}
  baseline_splits = set(artifact_utils.decode_split_names(baseline.split_names))
  splits = [s for s in artifact_utils.decode_split_names(statistics.split_names)
            if s in baseline_splits]
  if out is not None:
    out.split_names = artifact_utils.encode_split_names(splits)
  for split in splits:
    result = tfdv.validate_statistics(
        _load_stats(statistics, split), comparator,
        previous_statistics=_load_stats(baseline, split))
    drift = anomalies_pb2.Anomalies()
    drift.CopyFrom(result)
    # Keep the drift anomalies only: schema anomalies come from the
    # ExampleValidator and are reported from there.
    for name in list(drift.anomaly_info):
      info = drift.anomaly_info[name]
      if not any(r.type in (anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                            anomalies_pb2.AnomalyInfo
                            .COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH)
                 for r in info.reason):
        del drift.anomaly_info[name]
    drift.ClearField('dataset_anomaly_info')
    if label_change:
      info = drift.anomaly_info[features.LABEL_KEY]
      info.severity = anomalies_pb2.AnomalyInfo.ERROR
      info.short_description = 'Label set changed'
      info.description = label_change
      info.reason.add(type=anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                      short_description=info.short_description,
                      description=info.description)
    if out is not None:
      directory = artifact_utils.get_split_uri([out], split)
      tf.io.gfile.makedirs(directory)
      io_utils.write_bytes_file(
          os.path.join(directory, validator_executor.DEFAULT_FILE_NAME),
          drift.SerializeToString())
    messages = _messages(drift)
    if messages:
      found[split] = messages
  return found


def check(anomalies: Dict[str, List[str]], drift: Dict[str, List[str]],
          where: str) -> None:
  """Raises DataAnomaliesError naming every schema and drift anomaly."""
  lines = [f'  {kind} [{split}] {message}'
           for kind, found in (('schema', anomalies), ('drift', drift))
           for split, messages in found.items() for message in messages]
  if lines:
    raise DataAnomaliesError(
        f'Data validation failed; the run stops before training ({where}). '
        'Anomalies:\n' + '\n'.join(lines))


def copy_statistics(source: types.Artifact, target: types.Artifact) -> None:
  """Copies a statistics artifact's files, split names and span."""
  target.split_names = source.split_names
  target.span = source.span
  for split in artifact_utils.decode_split_names(source.split_names):
    src = artifact_utils.get_split_uri([source], split)
    dst = artifact_utils.get_split_uri([target], split)
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(src):
      tf.io.gfile.copy(os.path.join(src, name), os.path.join(dst, name),
                       overwrite=True)


@component
def AnomaliesGate(
    examples: InputArtifact[standard_artifacts.Examples],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    validated_statistics: OutputArtifact[standard_artifacts.ExampleStatistics],
    validated_schema: OutputArtifact[standard_artifacts.Schema],
    drift_anomalies: OutputArtifact[standard_artifacts.ExampleAnomalies],
    max_categorical_drift: Parameter[float],
    max_age_drift: Parameter[float],
    baseline_statistics: InputArtifact[
        standard_artifacts.ExampleStatistics] = None,
) -> None:
  """Fails on schema anomalies or drift; else republishes stats and schema."""
  schema_path = os.path.join(schema.uri, SCHEMA_FILE)
  schema_proto = tfdv.load_schema_text(schema_path)
  drift = {}
  labels = labels_of(examples.uri)
  if labels is None:
    raise FileNotFoundError(f'{examples.uri} has no {features.LABELS_FILE}: '
                            'examples must come from the ImageExampleGen')
  if baseline_statistics is not None:
    logging.info('Drift baseline: %s (span %s)', baseline_statistics.uri,
                 baseline_statistics.span)
    drift = find_drift(statistics, baseline_statistics, schema_proto,
                       max_categorical_drift, max_age_drift,
                       out=drift_anomalies,
                       label_change=label_set_change(
                           labels_of(baseline_statistics.uri), labels))
  else:
    logging.info('No validated statistics from an earlier run: the drift '
                 'check starts with the next span.')
    drift_anomalies.split_names = artifact_utils.encode_split_names([])
  check(find_anomalies(anomalies), drift,
        f'schema anomalies: {anomalies.uri}; drift: {drift_anomalies.uri}')
  copy_statistics(statistics, validated_statistics)
  with tf.io.gfile.GFile(os.path.join(validated_statistics.uri,
                                      features.LABELS_FILE), 'w') as f:
    f.write('\n'.join(labels) + '\n')
  tf.io.gfile.makedirs(validated_schema.uri)
  tf.io.gfile.copy(schema_path, os.path.join(validated_schema.uri, SCHEMA_FILE),
                   overwrite=True)
