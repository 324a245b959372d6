"""The Beam executor: checks the listed images, partitions, writes the report."""

import bisect
import collections
import csv
import hashlib
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

from absl import logging
import apache_beam as beam
from google.protobuf import json_format
from google.protobuf import struct_pb2
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components.image_example_gen.images import CORRUPT
from components.image_example_gen.images import EMPTY
from components.image_example_gen.images import ImageCheck
from components.image_example_gen.images import MISSING_IMAGE
from components.image_example_gen.images import TOO_MANY_PIXELS
from components.image_example_gen.images import UNSUPPORTED
from components.image_example_gen.layouts import BAD_AGE
from components.image_example_gen.layouts import DUPLICATE_ID
from components.image_example_gen.layouts import INPUT_PATTERNS
from components.image_example_gen.layouts import IngestionError
from components.image_example_gen.layouts import list_archive
from components.image_example_gen.layouts import Listing
from components.image_example_gen.layouts import MALFORMED_ROW
from components.image_example_gen.layouts import NO_ROW
from components.image_example_gen.layouts import OUTSIDE_ROOT
from components.image_example_gen.layouts import UNKNOWN_LABEL
from models import domain
from models import features

REPORT_FILE = 'ingestion_report.json'
QUARANTINE_FILE = 'quarantine.csv'
LABELS_FILE = features.LABELS_FILE
QUARANTINE_COLUMNS = ('source', 'image_id', 'lesion_id', 'path', 'reason',
                      'detail')

# Quarantine reason of the executor, and all the reasons.
SAME_BYTES_OTHER_LESION = 'same_bytes_other_lesion'
REASONS = (CORRUPT, EMPTY, UNSUPPORTED, TOO_MANY_PIXELS, MISSING_IMAGE, NO_ROW,
           UNKNOWN_LABEL, DUPLICATE_ID, SAME_BYTES_OTHER_LESION, BAD_AGE,
           OUTSIDE_ROOT, MALFORMED_ROW)

# exec_properties key under which the executor hands its listing (made once,
# on the launcher) to the Beam source.
_LISTING_KEY = '_image_listing'
_PROGRESS_EVERY = 2000


def record_to_example(record: Dict[str, Any], jpeg: bytes) -> tf.train.Example:
  """Builds the tf.Example of one checked image."""
  feature = {
      features.IMAGE_KEY: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[jpeg])),
      features.LABEL_KEY: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[record[features.LABEL_KEY]])),
  }
  for key in features.STRING_FEATURES:
    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[record[key].encode('utf-8')]))
  if record[features.AGE_KEY] is not None:
    feature[features.AGE_KEY] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[record[features.AGE_KEY]]))
  # Derived, for slicing the evaluation (bands: models/domain.AGE_BANDS).
  feature[features.AGE_BAND_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[domain.age_band(record[features.AGE_KEY]).encode('utf-8')]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _quarantine_row(record: Dict[str, Any], reason: str, detail: str):
  return dict(source=record['source'], image_id=record[features.IMAGE_ID_KEY],
              lesion_id=record[features.LESION_ID_KEY], path=record['path'],
              reason=reason, detail=detail)


class _CheckImages(beam.DoFn):
  """Checks images in the workers; quarantine rows go to a tagged output."""

  def __init__(self, max_pixels: int):
    self._check = ImageCheck(max_pixels)
    self._seen = 0
    self._converted = beam.metrics.Metrics.counter('ingestion', 'converted')
    self._rejected = beam.metrics.Metrics.counter('ingestion', 'quarantined')
    self._read = beam.metrics.Metrics.counter('ingestion', 'images_read')

  def process(self, record):
    ok, problem = self._check(record)
    self._seen += 1
    self._read.inc()
    if self._seen % _PROGRESS_EVERY == 0:
      logging.info('Ingestion: %d images checked by this worker', self._seen)
    if problem:
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput('quarantine',
                                     _quarantine_row(record, *problem))
      return
    sha, jpeg, converted = ok
    if converted:
      self._converted.inc()
    yield sha, (record, jpeg, converted)


def _resolve_same_bytes(item):
  """Copies of one image: the first listed wins; other lesions' copies go."""
  sha, copies = item
  copies = sorted(copies, key=lambda c: c[0]['order'])
  first = copies[0][0]
  kept = []
  for record, jpeg, converted in copies:
    if record[features.LESION_ID_KEY] != first[features.LESION_ID_KEY]:
      yield beam.pvalue.TaggedOutput('quarantine', _quarantine_row(
          record, SAME_BYTES_OTHER_LESION,
          f'same bytes as {first[features.IMAGE_ID_KEY]} of lesion '
          f'{first[features.LESION_ID_KEY]} (would leak across splits)'))
      continue
    kept.append(record[features.IMAGE_ID_KEY])
    yield record, jpeg, converted
  if len(kept) > 1:
    yield beam.pvalue.TaggedOutput('duplicates', {
        'sha256': sha, 'lesion_id': first[features.LESION_ID_KEY],
        'image_ids': kept})


def _read_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  custom_config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(
      exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
      custom_config)
  struct = struct_pb2.Struct()
  custom_config.custom_config.Unpack(struct)
  return json_format.MessageToDict(struct)


def archive_root(exec_properties: Dict[str, Any], layout: str) -> str:
  """The folder to list: input_base, or its span folder once resolved.

  The driver substitutes ``{SPAN}`` in the input pattern, e.g.
  ``span-3/*`` -> the archive root is ``<input_base>/span-3``.
  """
  input_config = example_gen_pb2.Input()
  proto_utils.json_to_proto(
      exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
  pattern = input_config.splits[0].pattern
  suffix = INPUT_PATTERNS[layout]
  prefix = pattern[:-len(suffix)].rstrip('/') if pattern.endswith(suffix) else ''
  return os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                      prefix) if prefix else exec_properties[
                          standard_component_specs.INPUT_BASE_KEY]


def cumulative_buckets(split_config: example_gen_pb2.SplitConfig) -> List[int]:
  """Each split's hash buckets added up: [70, 15, 15] -> [70, 85, 100]."""
  buckets = []
  for split in split_config.splits:
    buckets.append((buckets[-1] if buckets else 0) + split.hash_buckets)
  return buckets


def partition(example: tf.train.Example, num_partitions: int,
              buckets: Sequence[int], feature_name: str) -> int:
  """The split index of an example (a beam.Partition function).

  The hash partition of TFX's ExampleGen on ``partition_feature_name``, so
  that splits stay what they were: sha256 of the feature (the serialized
  tf.train.Feature) modulo the total buckets, then the first split whose
  cumulative bucket count (``cumulative_buckets``) exceeds it.
  """
  if num_partitions != len(buckets):
    raise ValueError(f'{num_partitions} partitions for {len(buckets)} '
                     f'splits {list(buckets)}')
  feature = example.features.feature
  if feature_name not in feature:
    raise ValueError(f'no feature {feature_name!r} to partition on (has '
                     f'{sorted(feature)})')
  key = feature[feature_name].SerializeToString(deterministic=True)
  bucket = int(hashlib.sha256(key).hexdigest(), 16) % buckets[-1]
  return bisect.bisect(buckets, bucket)


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Reads an image archive into splits, a quarantine and a report."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ImageToExample

  def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                             exec_properties: Dict[str, Any]
                             ) -> Dict[str, beam.pvalue.PCollection]:
    config = _read_config(exec_properties)
    root = archive_root(exec_properties, config['layout'])
    logging.info('Listing %s (%s layout)...', root, config['layout'])
    listing = list_archive(root, config['layout'], config['labels'],
                           config.get('label_map'))
    logging.info('Listed %d records to read, %d rows quarantined on sight, '
                 '%d other files ignored.', len(listing.records),
                 len(listing.quarantined), len(listing.ignored))
    if not listing.records and not listing.quarantined:
      raise IngestionError(f'no images found under {root!r} '
                           f'(layout {config["layout"]!r})')
    exec_properties[_LISTING_KEY] = (listing, config)

    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
        output_config)
    split_config = output_config.split_config
    buckets = cumulative_buckets(split_config)
    names = [s.name for s in split_config.splits]

    read = pipeline | 'ReadAndCheck' >> _ReadAndCheck(listing, config)  # pylint: disable=no-value-for-parameter
    examples = read['examples']
    parts = (examples
             | 'SplitData' >> beam.Partition(
                 partition, len(buckets), buckets,
                 split_config.partition_feature_name))
    splits = {name: parts[i] for i, name in enumerate(names)}

    counts = [
        splits[name] | f'Count[{name}]' >> beam.Map(
            lambda ex, s=name: (s, ex.features.feature[features.LABEL_KEY]
                                .int64_list.value[0],
                                ex.features.feature[features.LESION_ID_KEY]
                                .bytes_list.value[0].decode()))
        for name in names]
    report = _Report(self._examples_uri, listing, config, names)
    _ = (counts
         | 'FlattenCounts' >> beam.Flatten()
         | 'CollectCounts' >> beam.combiners.ToList()
         | 'WriteReport' >> beam.Map(
             report.write,
             quarantined=beam.pvalue.AsList(read['quarantine']),
             duplicates=beam.pvalue.AsList(read['duplicates']),
             converted=beam.pvalue.AsSingleton(read['converted'])))
    # Serialized here, deterministically (map fields in key order): TFX's
    # writer calls SerializeToString(), whose tf.Example feature-map order
    # varies, so two ingests of the same data gave different TFRecord bytes.
    return {name: split | f'Serialize[{name}]' >> beam.Map(
        lambda ex: ex.SerializeToString(deterministic=True))
            for name, split in splits.items()}

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    self._examples_uri = examples.uri
    super().Do(input_dict, output_dict, exec_properties)
    _, config = exec_properties[_LISTING_KEY]
    with tf.io.gfile.GFile(os.path.join(examples.uri, REPORT_FILE)) as f:
      report = json.load(f)
    examples.set_string_custom_property('labels', json.dumps(config['labels']))
    examples.set_int_custom_property('quarantined', report['quarantined'])
    examples.set_int_custom_property('input_records', report['input_records'])


@beam.ptransform_fn
def _ReadAndCheck(pipeline, listing: Listing, config: Dict[str, Any]):
  """Records -> {'examples', 'quarantine', 'duplicates', 'converted'}."""
  checked = (pipeline
             | 'ListRecords' >> beam.Create(listing.records, reshuffle=True)
             | 'CheckImages' >> beam.ParDo(
                 _CheckImages(int(config['max_pixels'])))
             .with_output_types(Tuple[str, Any])
             .with_outputs('quarantine', main='ok'))
  resolved = (checked.ok
              | 'GroupSameBytes' >> beam.GroupByKey()
              | 'ResolveSameBytes' >> beam.FlatMap(_resolve_same_bytes)
              .with_output_types(Tuple[Any, Any, Any])
              .with_outputs('quarantine', 'duplicates', main='kept'))
  quarantine = ((checked.quarantine, resolved.quarantine,
                 pipeline | 'ListingQuarantine' >> beam.Create(
                     listing.quarantined))
                | 'FlattenQuarantine' >> beam.Flatten())
  converted = (resolved.kept
               | 'IsConverted' >> beam.Map(lambda kept: int(kept[2]))
               | 'CountConverted' >> beam.CombineGlobally(sum))
  examples = (resolved.kept
              | 'ToExample' >> beam.MapTuple(
                  lambda record, jpeg, _: record_to_example(record, jpeg)))
  return {'examples': examples, 'quarantine': quarantine,
          'duplicates': resolved.duplicates, 'converted': converted}


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImageToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
  """The examples alone (the standard ExampleGen source interface)."""
  del split_pattern  # The layout decides what to read under the root.
  listing, config = exec_properties[_LISTING_KEY]
  return (pipeline | 'ReadAndCheck' >> _ReadAndCheck(listing, config))[  # pylint: disable=no-value-for-parameter
      'examples']


class _Report:
  """Writes ingestion_report.json, quarantine.csv, labels.txt; enforces."""

  def __init__(self, out_dir: str, listing: Listing, config: Dict[str, Any],
               split_names: List[str]):
    self.out_dir = out_dir
    self.root = listing.root
    self.input_rows = listing.input_rows
    self.files_without_row = listing.files_without_row
    self.ignored = listing.ignored
    self.config = config
    self.split_names = split_names

  def write(self, rows: List[Tuple[str, int, str]], quarantined: List[Dict],
            duplicates: List[Dict], converted: int) -> None:
    labels = self.config['labels']
    per_split = {s: collections.Counter() for s in self.split_names}
    lesions = {s: set() for s in self.split_names}
    for split, label, lesion in rows:
      per_split[split][labels[label]] += 1
      lesions[split].add(lesion)
    shared = set()
    for i, a in enumerate(self.split_names):
      for b in self.split_names[i + 1:]:
        shared |= lesions[a] & lesions[b]
    inputs = self.input_rows + self.files_without_row
    quarantined = sorted(quarantined, key=lambda q: (q['reason'], q['source']))
    report = {
        'data_root': self.root,
        'layout': self.config['layout'],
        'labels': labels,
        'input_rows': self.input_rows,
        'image_files_without_row': self.files_without_row,
        'input_records': inputs,
        'examples': len(rows),
        'quarantined': len(quarantined),
        'quarantined_by_reason': dict(sorted(collections.Counter(
            q['reason'] for q in quarantined).items())),
        'quarantined_fraction': len(quarantined) / max(inputs, 1),
        'converted_to_rgb_jpeg': converted,
        'examples_per_split': {s: sum(per_split[s].values())
                               for s in self.split_names},
        'examples_per_split_and_class': {
            s: {name: per_split[s].get(name, 0) for name in labels}
            for s in self.split_names},
        'lesions_per_split': {s: len(lesions[s]) for s in self.split_names},
        'lesions_in_several_splits': sorted(shared),
        'identical_images_within_a_lesion': sorted(
            duplicates, key=lambda d: d['image_ids']),
        'ignored_files': self.ignored,
        'quarantine_file': os.path.join(self.out_dir, QUARANTINE_FILE),
    }
    tf.io.gfile.makedirs(self.out_dir)
    with tf.io.gfile.GFile(os.path.join(self.out_dir, REPORT_FILE), 'w') as f:
      json.dump(report, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(self.out_dir, QUARANTINE_FILE),
                           'w') as f:
      writer = csv.DictWriter(f, fieldnames=QUARANTINE_COLUMNS)
      writer.writeheader()
      writer.writerows(quarantined)
    with tf.io.gfile.GFile(os.path.join(self.out_dir, LABELS_FILE), 'w') as f:
      f.write('\n'.join(labels) + '\n')
    self._enforce(report)

  def _enforce(self, report: Dict[str, Any]) -> None:
    where = os.path.join(self.out_dir, REPORT_FILE)
    if report['examples'] + report['quarantined'] != report['input_records']:
      raise IngestionError(
          f'counts do not reconcile: {report["examples"]} examples + '
          f'{report["quarantined"]} quarantined != {report["input_records"]} '
          f'inputs; see {where}')
    limit = float(self.config['max_quarantine_fraction'])
    if report['quarantined_fraction'] > limit:
      raise IngestionError(
          f'{report["quarantined"]} of {report["input_records"]} inputs '
          f'({report["quarantined_fraction"]:.1%}) were quarantined, more than '
          f'the limit of {limit:.1%}: {report["quarantined_by_reason"]}; see '
          f'{report["quarantine_file"]} and {where}')
    if not self.config.get('require_every_class_in_every_split', True):
      return
    missing = [(name, split) for split, by_class in
               report['examples_per_split_and_class'].items()
               for name, n in by_class.items() if n == 0]
    if missing:
      totals = collections.Counter()
      for by_class in report['examples_per_split_and_class'].values():
        totals.update(by_class)
      text = '; '.join(f'{name!r} ({totals[name]} examples in all) has none '
                       f'in {split!r}' for name, split in missing)
      raise IngestionError(
          f'every class must appear in every split: {text}. Add data for '
          f'these classes, change the split ratios, or drop the class from '
          f'the label list; see {where}')
