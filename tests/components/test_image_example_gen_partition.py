"""executor.partition: the splits of TFX's own ExampleGen, bucket for bucket."""

import pytest
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2

from components.image_example_gen import executor
from models import features


def _example(lesion_id) -> tf.train.Example:
  if isinstance(lesion_id, int):
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[lesion_id]))
  else:
    feature = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[lesion_id.encode()]))
  return tf.train.Example(features=tf.train.Features(
      feature={features.LESION_ID_KEY: feature,
               features.IMAGE_ID_KEY: tf.train.Feature(
                   bytes_list=tf.train.BytesList(value=[b'ISIC_0000000']))}))


@pytest.mark.parametrize('split_buckets', [
    {'train': 70, 'eval': 15, 'test': 15},
    {'train': 8, 'eval': 1, 'test': 1},
    {'train': 3, 'eval': 7},
    {'all': 1},
])
def test_partition_matches_tfx(split_buckets):
  split_config = example_gen_pb2.SplitConfig(
      splits=[example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b)
              for n, b in split_buckets.items()],
      partition_feature_name=features.LESION_ID_KEY)
  buckets = executor.cumulative_buckets(split_config)
  lesion_ids = ([f'HAM_{i:07d}' for i in range(1500)]
                + [f'ISIC_{i:07d}' for i in range(0, 60000, 97)]
                + ['', 'folders/nv/img 1', 'lésion', 'x' * 300]
                + list(range(-5, 200)))
  seen = set()
  for lesion_id in lesion_ids:
    example = _example(lesion_id)
    ours = executor.partition(example, len(buckets), buckets,
                              features.LESION_ID_KEY)
    theirs = base_example_gen_executor._PartitionFn(  # pylint: disable=protected-access
        example, len(buckets), buckets, split_config)
    assert ours == theirs, lesion_id
    seen.add(ours)
  assert seen == set(range(len(buckets)))


def test_cumulative_buckets():
  split_config = example_gen_pb2.SplitConfig(splits=[
      example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=70),
      example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=15),
      example_gen_pb2.SplitConfig.Split(name='test', hash_buckets=15)])
  assert executor.cumulative_buckets(split_config) == [70, 85, 100]


def test_partition_needs_the_feature_and_matching_partitions():
  example = _example('HAM_0000001')
  with pytest.raises(ValueError, match='no feature'):
    executor.partition(example, 2, [1, 2], 'patient_id')
  with pytest.raises(ValueError, match='3 partitions'):
    executor.partition(example, 3, [1, 2], features.LESION_ID_KEY)
