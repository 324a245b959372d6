"""ImageExampleGen: dermoscopy archives -> lesion-disjoint tf.Example splits.

A FileBasedExampleGen with its own executor, so it keeps everything the
standard ExampleGen does (input fingerprinting for the cache, spans, sharded
GZIP TFRecords, hash-partitioned splits) and adds image archives as input.

Layouts (``layout`` parameter):
  * ``ham10000``: a metadata CSV (``HAM10000_metadata.csv``, official columns
    lesion_id, image_id, dx, dx_type, age, sex, localization, dataset) and the
    images, ``<image_id>.jpg``, in any folder under the data root (the
    official release ships ``HAM10000_images_part_1/`` and ``_part_2/``).
  * ``folders``: ``<root>/<class>/<image>``; the image's file name (without
    extension) is its image_id and, lacking lesion information, its lesion_id.

Splits are ``partition_feature_name='lesion_id'`` hash buckets: every image
of one lesion lands in the same split, and a given lesion always lands in the
same split, on every run and machine (sha256 of the serialized feature).

Besides the splits, the executor writes ``ingestion_report.json`` into the
Examples artifact: input counts, examples per split and class, and every
input that was not turned into an example, with the reason; the numbers
reconcile (``examples == input_rows`` and every image file is accounted for).
"""

import collections
import csv
import io
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from google.protobuf import json_format
from google.protobuf import struct_pb2
from PIL import Image
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from models import features

REPORT_FILE = 'ingestion_report.json'
METADATA_CSV = 'HAM10000_metadata.csv'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
JPEG_MAGIC = b'\xff\xd8\xff'
# Re-encoding quality for inputs that are not RGB JPEG already.
JPEG_QUALITY = 95
# The glob (relative to the data root) that the driver fingerprints to decide
# whether the cached output is still valid.
_INPUT_PATTERNS = {'ham10000': '*', 'folders': '*/*'}
# exec_properties key under which the executor hands the archive listing
# (made once, on the launcher) to the Beam source.
_LISTING_KEY = '_image_listing'


class IngestionError(ValueError):
  """The archive cannot be ingested as configured; the message says why."""


def _read_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  custom_config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(
      exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
      custom_config)
  struct = struct_pb2.Struct()
  custom_config.custom_config.Unpack(struct)
  return json_format.MessageToDict(struct)


def _index_images(root: str) -> Dict[str, List[str]]:
  """image_id (file stem) -> paths of image files anywhere under root."""
  index = collections.defaultdict(list)
  for dirpath, _, filenames in tf.io.gfile.walk(root):
    for name in filenames:
      stem, ext = os.path.splitext(name)
      if ext.lower() in IMAGE_EXTENSIONS:
        index[stem].append(os.path.join(dirpath, name))
  return index


def _parse_age(raw: str, where: str) -> Optional[float]:
  raw = (raw or '').strip()
  if not raw:
    return None
  try:
    return float(raw)
  except ValueError:
    raise IngestionError(f'{where}: age {raw!r} is not a number') from None


def list_ham10000(root: str, labels: Sequence[str]
                  ) -> Tuple[List[Dict[str, Any]], List[str]]:
  """Records of a HAM10000-layout archive, and image files no row names."""
  csv_path = os.path.join(root, METADATA_CSV)
  if not tf.io.gfile.exists(csv_path):
    raise IngestionError(f'{csv_path} not found: the ham10000 layout needs '
                         'the official metadata CSV at the data root')
  label_index = {name: i for i, name in enumerate(labels)}
  images = _index_images(root)
  records, seen = [], set()
  with tf.io.gfile.GFile(csv_path, 'r') as f:
    reader = csv.DictReader(f)
    missing = {'lesion_id', 'image_id', 'dx'} - set(reader.fieldnames or ())
    if missing:
      raise IngestionError(f'{csv_path}: missing columns {sorted(missing)}')
    for line_no, row in enumerate(reader, start=2):
      where = f'{csv_path}:{line_no}'
      image_id = row['image_id'].strip()
      dx = row['dx'].strip()
      if dx not in label_index:
        raise IngestionError(f'{where}: label {dx!r} is not in the label list '
                             f'{list(labels)}')
      if image_id in seen:
        raise IngestionError(f'{where}: duplicate image_id {image_id!r}')
      seen.add(image_id)
      paths = images.get(image_id)
      if not paths:
        raise IngestionError(f'{where}: no image file for {image_id!r} under '
                             f'{root}')
      if len(paths) > 1:
        raise IngestionError(f'{where}: {image_id!r} has several files: '
                             f'{sorted(paths)}')
      records.append({
          'path': paths[0],
          features.LABEL_KEY: label_index[dx],
          features.IMAGE_ID_KEY: image_id,
          features.LESION_ID_KEY: row['lesion_id'].strip() or image_id,
          features.AGE_KEY: _parse_age(row.get('age', ''), where),
          features.SEX_KEY: (row.get('sex') or '').strip() or features.UNKNOWN,
          features.LOCALIZATION_KEY: (row.get('localization') or '').strip()
                                     or features.UNKNOWN,
          features.DATASET_KEY: (row.get('dataset') or '').strip()
                                or features.UNKNOWN,
      })
  unlisted = sorted(p for stem, paths in images.items() if stem not in seen
                    for p in paths)
  return records, unlisted


def list_folders(root: str, labels: Sequence[str]
                 ) -> Tuple[List[Dict[str, Any]], List[str]]:
  """Records of a ``<root>/<class>/<image>`` archive."""
  label_index = {name: i for i, name in enumerate(labels)}
  dataset = os.path.basename(os.path.normpath(root))
  records, ignored = [], []
  for class_name in sorted(tf.io.gfile.listdir(root)):
    class_name = class_name.rstrip('/')
    class_dir = os.path.join(root, class_name)
    if not tf.io.gfile.isdir(class_dir):
      ignored.append(class_dir)
      continue
    if class_name not in label_index:
      raise IngestionError(f'class folder {class_dir!r} is not in the label '
                           f'list {list(labels)}')
    for name in sorted(tf.io.gfile.listdir(class_dir)):
      path = os.path.join(class_dir, name)
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        ignored.append(path)
        continue
      image_id = f'{class_name}/{stem}'
      records.append({
          'path': path,
          features.LABEL_KEY: label_index[class_name],
          features.IMAGE_ID_KEY: image_id,
          features.LESION_ID_KEY: image_id,
          features.AGE_KEY: None,
          features.SEX_KEY: features.UNKNOWN,
          features.LOCALIZATION_KEY: features.UNKNOWN,
          features.DATASET_KEY: dataset,
      })
  return records, ignored


LISTERS = {'ham10000': list_ham10000, 'folders': list_folders}


def to_rgb_jpeg(data: bytes, where: str) -> Tuple[bytes, bool]:
  """(JPEG bytes, converted?) for an image file's bytes.

  RGB JPEGs are kept byte for byte; other modes and formats are decoded and
  re-encoded as RGB JPEG.  Undecodable input raises IngestionError.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      if data.startswith(JPEG_MAGIC) and image.mode == 'RGB':
        image.verify()
        return data, False
      image.load()
      buf = io.BytesIO()
      image.convert('RGB').save(buf, format='JPEG', quality=JPEG_QUALITY)
      return buf.getvalue(), True
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise IngestionError(f'{where}: not a readable image ({e})') from e


def record_to_example(record: Dict[str, Any]) -> tf.train.Example:
  """Reads one image and builds its tf.Example."""
  with tf.io.gfile.GFile(record['path'], 'rb') as f:
    data = f.read()
  jpeg, _ = to_rgb_jpeg(data, record['path'])
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
  return tf.train.Example(features=tf.train.Features(feature=feature))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImageToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
  """Lists the archive (on the launcher) and reads images in the workers."""
  del split_pattern  # The layout decides what to read under input_base.
  records, _ = exec_properties[_LISTING_KEY]
  return (pipeline
          | 'ListRecords' >> beam.Create(records, reshuffle=True)
          | 'ReadImages' >> beam.Map(record_to_example))


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Reads an image archive; also writes ingestion_report.json."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ImageToExample

  def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                             exec_properties: Dict[str, Any]
                             ) -> Dict[str, beam.pvalue.PCollection]:
    config = _read_config(exec_properties)
    root = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    records, not_ingested = LISTERS[config['layout']](root, config['labels'])
    if not records:
      raise IngestionError(f'no images found under {root!r} '
                           f'(layout {config["layout"]!r})')
    exec_properties[_LISTING_KEY] = (records, not_ingested)
    splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
    tagged = [
        pcoll | f'Tag[{name}]' >> beam.Map(lambda ex, s=name: (s, ex))
        for name, pcoll in splits.items()
    ]
    report_path = os.path.join(self._examples_uri, REPORT_FILE)
    _ = (tagged
         | 'FlattenSplits' >> beam.Flatten()
         | 'SplitLabelLesion' >> beam.Map(
             lambda kv: (kv[0],
                         kv[1].features.feature[features.LABEL_KEY]
                         .int64_list.value[0],
                         kv[1].features.feature[features.LESION_ID_KEY]
                         .bytes_list.value[0].decode()))
         | 'Collect' >> beam.combiners.ToList()
         | 'WriteReport' >> beam.Map(
             _write_report, report_path, config, root, len(records),
             not_ingested))
    return splits

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    self._examples_uri = artifact_utils.get_single_uri(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    super().Do(input_dict, output_dict, exec_properties)


def _write_report(rows: List[Tuple[str, int, str]], path: str,
                  config: Dict[str, Any], root: str, input_rows: int,
                  not_ingested: List[str]) -> None:
  labels = config['labels']
  per_split = collections.defaultdict(collections.Counter)
  lesions = collections.defaultdict(set)
  for split, label, lesion in rows:
    per_split[split][labels[label]] += 1
    lesions[split].add(lesion)
  shared = set()
  names = sorted(lesions)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared |= lesions[a] & lesions[b]
  report = {
      'data_root': root,
      'layout': config['layout'],
      'labels': labels,
      'input_records': input_rows,
      'examples': len(rows),
      'examples_per_split': {s: sum(c.values()) for s, c in per_split.items()},
      'examples_per_split_and_class': {
          s: {name: c.get(name, 0) for name in labels}
          for s, c in sorted(per_split.items())},
      'lesions_per_split': {s: len(v) for s, v in sorted(lesions.items())},
      'lesions_in_several_splits': sorted(shared),
      'not_ingested': [{'path': p, 'reason': 'not listed in the metadata'
                        if config['layout'] == 'ham10000'
                        else 'not an image in a class folder'}
                       for p in not_ingested],
  }
  if report['examples'] != input_rows:
    raise IngestionError(f'{input_rows} records listed but {len(rows)} '
                         'examples written')
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)


class ImageExampleGen(FileBasedExampleGen):
  """Ingests a dermoscopy image archive into lesion-disjoint splits."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str, layout: str, labels: Sequence[str],
               split_buckets: Dict[str, int]):
    """Args:
      input_base: the archive's root folder.
      layout: one of LISTERS ('ham10000', 'folders').
      labels: the canonical label list; a label's index is its int64 label.
      split_buckets: split name -> hash buckets (relative split size).
    """
    if layout not in LISTERS:
      raise ValueError(f'layout must be one of {sorted(LISTERS)}: {layout!r}')
    struct = struct_pb2.Struct()
    struct.update({'layout': layout, 'labels': list(labels)})
    custom_config = example_gen_pb2.CustomConfig()
    custom_config.custom_config.Pack(struct)
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name='all',
                                        pattern=_INPUT_PATTERNS[layout])]),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=n,
                                                          hash_buckets=b)
                        for n, b in split_buckets.items()],
                partition_feature_name=features.LESION_ID_KEY)),
        custom_config=custom_config)
