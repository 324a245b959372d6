"""The pipeline's Beam stages run as executors, and readers of their outputs,
for comparing one Beam runner's outputs with another's (portable job
service, Flink) in tests."""

import glob
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.components.statistics_gen import executor as statistics_executor
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import image_example_gen
from pipeline import pipeline as pipeline_lib

SPLITS = ('train', 'eval', 'test')


def exec_properties(component):
  return {k: (proto_utils.proto_to_json(v) if hasattr(v, 'DESCRIPTOR') else v)
          for k, v in component.exec_properties.items()}


def components_of(settings):
  return {c.id: c for c in pipeline_lib.create_pipeline(settings).components}


def context(beam_args, tmp_dir):
  return base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=list(beam_args), tmp_dir=str(tmp_dir), unique_id='1')


def run_statistics_gen(settings, beam_args, examples_uri, out,
                       schema_uri=None):
  """The pipeline's StatisticsGen on an Examples folder (and, as in the
  pipeline, the imported schema's folder); its output URI."""
  inputs = {}
  if schema_uri:
    schema = standard_artifacts.Schema()
    schema.uri = schema_uri
    inputs['schema'] = [schema]
  examples = standard_artifacts.Examples()
  examples.uri = examples_uri
  examples.split_names = '["' + '","'.join(SPLITS) + '"]'
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = str(out)
  statistics_executor.Executor(context(beam_args, str(out) + '.tmp')).Do(
      dict(inputs, examples=[examples]), {'statistics': [statistics]},
      exec_properties(components_of(settings)['StatisticsGen']))
  return statistics.uri


def run_stages(settings, beam_args, out):
  """The pipeline's ImageExampleGen then StatisticsGen, with beam_args;
  outputs in out/examples and out/statistics."""
  examples = standard_artifacts.Examples()
  examples.uri = str(out / 'examples')
  image_example_gen.Executor(context(beam_args, out / 'tmp')).Do(
      {}, {'examples': [examples]},
      exec_properties(components_of(settings)['ImageExampleGen']))
  run_statistics_gen(settings, beam_args, examples.uri, out / 'statistics')
  return str(out)


def split_examples(examples_uri):
  """split -> sorted canonical tf.Examples (map order is not canonical)."""
  out = {}
  for split in SPLITS:
    files = glob.glob(os.path.join(examples_uri, f'Split-{split}', '*'))
    records = tf.data.TFRecordDataset(files, compression_type='GZIP')
    out[split] = sorted(
        tf.train.Example.FromString(r.numpy()).SerializeToString(
            deterministic=True) for r in records)
  return out


def split_statistics(statistics_uri, split):
  proto = statistics_pb2.DatasetFeatureStatisticsList()
  with open(os.path.join(statistics_uri, f'Split-{split}', 'FeatureStats.pb'),
            'rb') as f:
    proto.ParseFromString(f.read())
  # The order of features is the order the runner merged them in (Flink's
  # differs from the DirectRunner's); each feature's statistics are not.
  for dataset in proto.datasets:
    features = sorted(dataset.features, key=lambda f: tuple(f.path.step))
    del dataset.features[:]
    dataset.features.extend(features)
  return proto
