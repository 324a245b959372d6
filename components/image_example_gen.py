"""ImageExampleGen: dermoscopy archives -> lesion-disjoint tf.Example splits.

A FileBasedExampleGen with its own executor, so it keeps what the standard
ExampleGen does (input fingerprinting for the cache, spans, sharded GZIP
TFRecords, hash-partitioned splits) and adds image archives as input, with a
quarantine for everything that cannot be trusted.

Layouts (``layout``):
  * ``ham10000``: ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type,
    age, sex, localization, dataset) at the root and ``<image_id>.jpg`` in any
    folder under it (the release ships ``HAM10000_images_part_1/``, ``_2/``).
  * ``isic2019``: ``ISIC_2019_Training_GroundTruth.csv`` (image + one-hot
    columns MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK),
    ``ISIC_2019_Training_Metadata.csv`` (image, age_approx,
    anatom_site_general, lesion_id, sex) and the images under the root.
  * ``folders``: ``<root>/<class>/<image>``, any class names; the file name is
    the image id and, lacking lesion information, the lesion id.
  * ``csv``: ``labels.csv`` at the root with columns ``path`` (relative to the
    root) and ``label``, and optionally image_id, lesion_id, age, sex,
    localization, dataset.
A label map (``{'AK': 'akiec', ...}``) brings source labels to the canonical
label list; the list is written into the Examples artifact (``labels.txt``)
and every example's ``label`` is an index into it.

Splits are ``partition_feature_name='lesion_id'`` hash buckets: all images
of a lesion land in one split, the same split on every run and machine.

Every input either becomes an example or lands in the quarantine
(``quarantine.csv``, one row per record with its reason); the numbers in
``ingestion_report.json`` reconcile: ``examples + quarantined == input rows +
image files without a row``.  The run fails, naming the report, when the
quarantined fraction exceeds ``max_quarantine_fraction`` or when a class is
absent from a split.  Grayscale, CMYK, alpha and PNG images are converted to
RGB JPEG and counted; two copies of one image under one lesion are reported,
under two lesions (a split leak) all but the first are quarantined.
"""

import collections
import csv
import hashlib
import io
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
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
from pipeline import configs

REPORT_FILE = 'ingestion_report.json'
QUARANTINE_FILE = 'quarantine.csv'
LABELS_FILE = features.LABELS_FILE
HAM10000_CSV = configs.HAM10000_CSV
ISIC2019_GROUND_TRUTH = configs.ISIC2019_GROUND_TRUTH
ISIC2019_METADATA = configs.ISIC2019_METADATA
GENERIC_CSV = configs.GENERIC_CSV
ISIC2019_CLASSES = configs.ISIC2019_COLUMN_ORDER

# Files with these extensions are images to account for; anything else under
# a HAM10000 / ISIC root is listed as ignored (README, CSVs, licences).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp')
SUPPORTED_FORMATS = ('JPEG', 'MPO', 'PNG')  # MPO: multi-picture JPEG.
JPEG_MAGIC = b'\xff\xd8\xff'
JPEG_QUALITY = 95  # Re-encoding quality for converted images.
QUARANTINE_COLUMNS = ('source', 'image_id', 'lesion_id', 'path', 'reason',
                      'detail')

# Quarantine reasons.
CORRUPT = 'corrupt_image'
EMPTY = 'empty_file'
UNSUPPORTED = 'unsupported_format'
TOO_MANY_PIXELS = 'too_many_pixels'
MISSING_IMAGE = 'missing_image'
NO_ROW = 'image_without_row'
UNKNOWN_LABEL = 'unknown_label'
DUPLICATE_ID = 'duplicate_image_id'
SAME_BYTES_OTHER_LESION = 'same_bytes_other_lesion'
BAD_AGE = 'invalid_age'
OUTSIDE_ROOT = 'path_outside_root'
# A CSV row with more or fewer fields than its header: its values cannot be
# matched to columns with certainty (an unquoted comma shifts the label).
MALFORMED_ROW = 'malformed_row'
REASONS = (CORRUPT, EMPTY, UNSUPPORTED, TOO_MANY_PIXELS, MISSING_IMAGE, NO_ROW,
           UNKNOWN_LABEL, DUPLICATE_ID, SAME_BYTES_OTHER_LESION, BAD_AGE,
           OUTSIDE_ROOT, MALFORMED_ROW)
MIN_AGE, MAX_AGE = 0.0, 120.0
_SEX_ALIASES = {'m': 'male', 'male': 'male', 'f': 'female', 'female': 'female',
                '': features.UNKNOWN, 'unknown': features.UNKNOWN}

# The glob (relative to the archive root) that the driver fingerprints to
# decide whether the cached output is still valid.
_INPUT_PATTERNS = {'ham10000': '*', 'isic2019': '*', 'csv': '*',
                   'folders': '*/*'}
# exec_properties key under which the executor hands its listing (made once,
# on the launcher) to the Beam source.
_LISTING_KEY = '_image_listing'
_PROGRESS_EVERY = 2000


class IngestionError(ValueError):
  """The archive cannot be ingested as configured; the message says why."""


class Listing:
  """What the launcher found: records to read, rows already quarantined."""

  def __init__(self, root: str):
    self.root = root
    self.records: List[Dict[str, Any]] = []
    self.quarantined: List[Dict[str, str]] = []
    self.ignored: List[str] = []    # Non-image files; not records.
    self.input_rows = 0             # Metadata rows (0 for folders).
    self.files_without_row = 0      # Image files no metadata row names.

  def quarantine(self, reason: str, detail: str, source: str,
                 image_id: str = '', lesion_id: str = '', path: str = ''):
    self.quarantined.append(dict(source=source, image_id=image_id,
                                 lesion_id=lesion_id, path=path,
                                 reason=reason, detail=detail))


class _Labeler:
  """Source label -> index in the canonical list (through the label map)."""

  def __init__(self, labels: Sequence[str], label_map: Dict[str, str]):
    self.labels = list(labels)
    self._index = {name: i for i, name in enumerate(labels)}
    self._map = dict(label_map)

  def __call__(self, source_label: str) -> Optional[int]:
    name = self._map.get(source_label, source_label)
    return self._index.get(name)

  def describe(self, source_label: str) -> str:
    mapped = self._map.get(source_label)
    via = f' (mapped to {mapped!r})' if mapped else ''
    return (f'label {source_label!r}{via} is not in the label list '
            f'{self.labels}')


def _is_local(path: str) -> bool:
  return '://' not in path


def _inside(root: str, path: str) -> bool:
  """Whether path (after resolving links and '..') lies under root."""
  if not _is_local(path):
    return os.path.normpath(path).startswith(os.path.normpath(root) + '/')
  real_root = os.path.realpath(root)
  return os.path.realpath(path).startswith(real_root + os.sep)


def _index_images(root: str, listing: Listing) -> Dict[str, List[str]]:
  """image_id (file stem) -> image files anywhere under root."""
  index = collections.defaultdict(list)
  for dirpath, _, filenames in tf.io.gfile.walk(root):
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      stem, ext = os.path.splitext(name)
      if ext.lower() in IMAGE_EXTENSIONS:
        index[stem].append(path)
      elif dirpath.rstrip('/') != root.rstrip('/'):
        listing.ignored.append(path)
  return index


def _parse_age(raw: Optional[str]) -> Tuple[Optional[float], Optional[str]]:
  """(age or None, problem or None)."""
  raw = (raw or '').strip()
  if not raw:
    return None, None
  try:
    age = float(raw)
  except ValueError:
    return None, f'age {raw!r} is not a number'
  if not MIN_AGE <= age <= MAX_AGE:
    return None, f'age {age:g} is outside [{MIN_AGE:g}, {MAX_AGE:g}]'
  return age, None


def _sex(raw: Optional[str]) -> str:
  value = (raw or '').strip()
  return _SEX_ALIASES.get(value.lower(), value)


# The patient-metadata columns of each layout's CSV: image id, age, sex,
# body site (``skinlesion predict --metadata`` reads the same files).
METADATA_COLUMNS: Dict[str, Dict[str, str]] = {
    'ham10000': {'image': 'image_id', features.AGE_KEY: 'age',
                 features.SEX_KEY: 'sex',
                 features.LOCALIZATION_KEY: 'localization'},
    'isic2019': {'image': 'image', features.AGE_KEY: 'age_approx',
                 features.SEX_KEY: 'sex',
                 features.LOCALIZATION_KEY: 'anatom_site_general'},
}


def _metadata_fields(row: Dict[str, str], layout: str) -> Dict[str, Any]:
  """_add_row's raw age / sex / localization from a layout's CSV row."""
  columns = METADATA_COLUMNS[layout]
  return {'age_raw': row.get(columns[features.AGE_KEY]),
          'sex': row.get(columns[features.SEX_KEY]),
          'localization': row.get(columns[features.LOCALIZATION_KEY])}


def patient_metadata(age_raw: Optional[str], sex_raw: Optional[str],
                     localization_raw: Optional[str]
                     ) -> Tuple[Dict[str, Any], Optional[str]]:
  """({age, sex, localization} as ingestion writes them, problem or None):
  age a number in range or None, sex / site stripped ('unknown' when
  empty), sex aliases ('M', 'F') mapped."""
  age, problem = _parse_age(age_raw)
  return {features.AGE_KEY: age,
          features.SEX_KEY: _sex(sex_raw) or features.UNKNOWN,
          features.LOCALIZATION_KEY: (localization_raw or '').strip()
                                     or features.UNKNOWN}, problem


# One CSV record: (first physical line, {column: value}, problem or None).
CsvRow = Tuple[int, Dict[str, str], Optional[str]]


def read_csv(path: str) -> Tuple[List[str], List[CsvRow]]:
  """Columns and rows of a CSV (UTF-8, a BOM is tolerated).

  A row whose field count differs from the header's comes with a problem
  (its values cannot be matched to columns with certainty: an unquoted comma
  shifts the label); blank lines are skipped.  Raises IngestionError for a
  file that is not UTF-8 (naming the byte), a CSV syntax error (naming the
  line) or a header that names a column twice.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise IngestionError(
        f'{path}: not UTF-8 (byte {data[e.start:e.start + 1]!r} at offset '
        f'{e.start}, line {line}); re-encode it as UTF-8, e.g. '
        f'`iconv -f latin1 -t utf-8`') from None
  reader = csv.reader(io.StringIO(text, newline=''))
  try:
    header = next(reader, [])
    columns = list(header)
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
      raise IngestionError(f'{path}: the header names columns {duplicated} '
                           'more than once')
    rows = []
    start = reader.line_num + 1
    for values in reader:
      if values:
        problem = None
        if len(values) != len(columns):
          problem = (f'{len(values)} fields, the header has {len(columns)} '
                     '(an unquoted comma or a missing field?)')
        rows.append((start, dict(zip(columns, values)), problem))
      start = reader.line_num + 1
  except csv.Error as e:
    raise IngestionError(f'{path}: line {reader.line_num}: not valid CSV '
                         f'({e})') from None
  return columns, rows


def _require(path: str, columns: Sequence[str], required: Sequence[str]):
  missing = [c for c in required if c not in columns]
  if missing:
    raise IngestionError(f'{path}: missing columns {missing} (has {columns})')


def _layout_csv(root: str, name: str, layout: str,
                required: Sequence[str]) -> Tuple[List[str], List[Dict]]:
  """Columns and rows of a layout's CSV, which must exist with `required`."""
  path = os.path.join(root, name)
  if not tf.io.gfile.exists(path):
    raise IngestionError(f'{path} not found: the {layout} layout needs it at '
                         f'the data root, with columns {list(required)}')
  columns, rows = read_csv(path)
  _require(path, columns, required)
  return columns, rows


def _add_row(listing: Listing, labeler: _Labeler, seen: Dict[str, str], *,
             source: str, image_id: str, lesion_id: str, source_label: str,
             path: Optional[str], age_raw: Optional[str],
             sex: Optional[str], localization: Optional[str],
             dataset: str) -> None:
  """Validates one metadata row; appends a record or a quarantine row."""
  lesion_id = lesion_id or image_id
  q = dict(source=source, image_id=image_id, lesion_id=lesion_id,
           path=path or '')
  if not image_id:
    listing.quarantine(MISSING_IMAGE, 'row has no image id', **q)
    return
  if image_id in seen:
    listing.quarantine(DUPLICATE_ID, f'image_id {image_id!r} already at '
                       f'{seen[image_id]}', **q)
    return
  seen[image_id] = source
  label = labeler(source_label)
  if label is None:
    listing.quarantine(UNKNOWN_LABEL, labeler.describe(source_label), **q)
    return
  patient, problem = patient_metadata(age_raw, sex, localization)
  if problem:
    listing.quarantine(BAD_AGE, problem, **q)
    return
  if path is None:
    listing.quarantine(MISSING_IMAGE, f'no image file for {image_id!r}', **q)
    return
  if not _inside(listing.root, path):
    listing.quarantine(OUTSIDE_ROOT, f'{path} resolves outside the data '
                       f'root {listing.root}', **q)
    return
  listing.records.append({
      'path': path, 'source': source,
      'order': len(listing.records),  # Listing order: the first copy wins.
      features.LABEL_KEY: label,
      features.IMAGE_ID_KEY: image_id,
      features.LESION_ID_KEY: lesion_id,
      **patient,
      features.DATASET_KEY: (dataset or '').strip() or features.UNKNOWN,
  })


def _malformed(listing: Listing, source: str, image_id: str,
               problem: str) -> None:
  listing.quarantine(MALFORMED_ROW, problem, source=source, image_id=image_id)


def _images_for_rows(listing: Listing, index: Dict[str, List[str]],
                     named: Iterable[str]) -> None:
  """Quarantines image files that no metadata row names."""
  named = set(named)
  for stem, paths in sorted(index.items()):
    for i, path in enumerate(paths):
      if stem not in named:
        listing.files_without_row += 1
        listing.quarantine(NO_ROW, 'no metadata row names this image',
                           source=path, image_id=stem, path=path)
      elif i > 0:  # Same stem twice on disk: only the first is used.
        listing.files_without_row += 1
        listing.quarantine(DUPLICATE_ID, f'{stem!r} also at {paths[0]}',
                           source=path, image_id=stem, path=path)


def list_ham10000(root: str, labeler: _Labeler) -> Listing:
  _, rows = _layout_csv(root, HAM10000_CSV, 'ham10000',
                        ('lesion_id', 'image_id', 'dx'))
  listing = Listing(root)
  index = _index_images(root, listing)
  seen: Dict[str, str] = {}
  malformed = set()
  for line, row, problem in rows:
    image_id = (row.get('image_id') or '').strip()
    if problem:
      _malformed(listing, f'{HAM10000_CSV}:{line}', image_id, problem)
      malformed.add(image_id)
      continue
    paths = index.get(image_id)
    _add_row(listing, labeler, seen, source=f'{HAM10000_CSV}:{line}',
             image_id=image_id, lesion_id=(row.get('lesion_id') or '').strip(),
             source_label=(row.get('dx') or '').strip(),
             path=paths[0] if paths else None,
             **_metadata_fields(row, 'ham10000'),
             dataset=row.get('dataset'))
  listing.input_rows = len(rows)
  _images_for_rows(listing, index, set(seen) | malformed)
  return listing


def list_isic2019(root: str, labeler: _Labeler) -> Listing:
  columns, rows = _layout_csv(root, ISIC2019_GROUND_TRUTH, 'isic2019',
                              ('image',))
  meta_path = os.path.join(root, ISIC2019_METADATA)
  listing = Listing(root)
  index = _index_images(root, listing)
  classes = [c for c in columns if c in ISIC2019_CLASSES]
  metadata = {}
  if tf.io.gfile.exists(meta_path):
    meta_columns, meta_rows = read_csv(meta_path)
    _require(meta_path, meta_columns, ('image',))
    metadata = {(r.get('image') or '').strip(): (line, r, problem)
                for line, r, problem in meta_rows}
  seen: Dict[str, str] = {}
  malformed = set()
  for line, row, problem in rows:
    image_id = (row.get('image') or '').strip()
    meta_line, meta, meta_problem = metadata.get(image_id, (0, {}, None))
    if problem or meta_problem:
      _malformed(listing, f'{ISIC2019_GROUND_TRUTH}:{line}', image_id,
                 problem or f'{ISIC2019_METADATA}:{meta_line}: {meta_problem}')
      malformed.add(image_id)
      continue
    hot = [c for c in classes if _is_one(row.get(c))]
    source_label = hot[0] if len(hot) == 1 else '+'.join(hot) or '<none>'
    paths = index.get(image_id)
    _add_row(listing, labeler, seen, source=f'{ISIC2019_GROUND_TRUTH}:{line}',
             image_id=image_id,
             lesion_id=(meta.get('lesion_id') or '').strip(),
             source_label=source_label, path=paths[0] if paths else None,
             **_metadata_fields(meta, 'isic2019'),
             dataset='isic2019')
  listing.input_rows = len(rows)
  _images_for_rows(listing, index, set(seen) | malformed)
  return listing


def _is_one(value: Optional[str]) -> bool:
  try:
    return float(value or 0) == 1.0
  except ValueError:
    return False


def list_csv(root: str, labeler: _Labeler) -> Listing:
  _, rows = _layout_csv(root, GENERIC_CSV, 'csv', ('path', 'label'))
  listing = Listing(root)
  seen: Dict[str, str] = {}
  for line, row, problem in rows:
    if problem:
      _malformed(listing, f'{GENERIC_CSV}:{line}',
                 (row.get('image_id') or row.get('path') or '').strip(),
                 problem)
      continue
    relative = (row.get('path') or '').strip()
    path = os.path.normpath(os.path.join(root, relative)) if relative else None
    if path is not None and _is_local(path) and not os.path.exists(path):
      if _inside(root, path):
        path = None  # Missing file (a path outside the root is reported so).
    image_id = (row.get('image_id') or '').strip() or relative
    _add_row(listing, labeler, seen, source=f'{GENERIC_CSV}:{line}',
             image_id=image_id, lesion_id=(row.get('lesion_id') or '').strip(),
             source_label=(row.get('label') or '').strip(), path=path,
             age_raw=row.get('age'), sex=row.get('sex'),
             localization=row.get('localization'), dataset=row.get('dataset'))
  listing.input_rows = len(rows)
  return listing


def list_folders(root: str, labeler: _Labeler) -> Listing:
  listing = Listing(root)
  dataset = os.path.basename(os.path.normpath(root))
  seen: Dict[str, str] = {}
  for class_name in sorted(tf.io.gfile.listdir(root)):
    class_name = class_name.rstrip('/')
    class_dir = os.path.join(root, class_name)
    if not tf.io.gfile.isdir(class_dir):
      listing.ignored.append(class_dir)
      continue
    for name in sorted(tf.io.gfile.listdir(class_dir)):
      path = os.path.join(class_dir, name)
      if tf.io.gfile.isdir(path):
        listing.ignored.append(path)
        continue
      image_id = f'{class_name}/{os.path.splitext(name)[0]}'
      listing.files_without_row += 1  # Every file found is an input.
      if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        listing.quarantine(UNSUPPORTED, f'{name!r} is not an image file',
                           source=path, image_id=image_id, path=path)
        continue
      _add_row(listing, labeler, seen, source=path, image_id=image_id,
               lesion_id=image_id, source_label=class_name, path=path,
               age_raw=None, sex=features.UNKNOWN,
               localization=features.UNKNOWN, dataset=dataset)
  return listing


LISTERS = {'ham10000': list_ham10000, 'isic2019': list_isic2019,
           'folders': list_folders, 'csv': list_csv}


def list_archive(root: str, layout: str, labels: Sequence[str],
                 label_map: Optional[Dict[str, str]] = None) -> Listing:
  """Lists an archive: records to read and rows quarantined on sight."""
  if layout not in LISTERS:
    raise IngestionError(f'layout must be one of {sorted(LISTERS)}, got '
                         f'{layout!r}')
  if not tf.io.gfile.isdir(root):
    raise IngestionError(f'data root {root!r} is not a folder')
  return LISTERS[layout](root, _Labeler(labels, label_map or {}))


class _CollectingLabeler(_Labeler):
  """Accepts every well-formed source label and records its canonical name
  (for --labels auto); ISIC 2019 rows with no or several diagnoses stay
  unknown labels."""

  def __init__(self, label_map: Dict[str, str]):
    super().__init__([], label_map)
    self.names = set()

  def __call__(self, source_label: str) -> Optional[int]:
    name = self._map.get(source_label, source_label)
    if not name or name == '<none>' or '+' in name:
      return None
    self.names.add(name)
    return 0


def archive_labels(root: str, layout: str,
                   label_map: Optional[Dict[str, str]] = None) -> List[str]:
  """The classes an archive names, sorted: folder names, or the label
  column's values (ISIC 2019: the diagnoses some image has), through the
  label map."""
  if layout not in LISTERS:
    raise IngestionError(f'layout must be one of {sorted(LISTERS)}, got '
                         f'{layout!r}')
  if not tf.io.gfile.isdir(root):
    raise IngestionError(f'data root {root!r} is not a folder')
  labeler = _CollectingLabeler(label_map or {})
  LISTERS[layout](root, labeler)
  return sorted(labeler.names)


def latest_span_root(root: str, span_folder: str) -> str:
  """The newest span folder (largest {SPAN}) of root, as ExampleGen's
  driver resolves it."""
  prefix, _, suffix = span_folder.partition('{SPAN}')
  spans = []
  for name in tf.io.gfile.listdir(root):
    name = name.rstrip('/')
    middle = name[len(prefix):len(name) - len(suffix) or None]
    if (name.startswith(prefix) and name.endswith(suffix)
        and middle.isdigit()):
      spans.append((int(middle), name))
  if not spans:
    raise IngestionError(f'no span folder {span_folder!r} in {root}')
  return os.path.join(root, max(spans)[1])


class ImageCheck:
  """Reads one image: (sha256, jpeg bytes, converted?) or a quarantine row."""

  def __init__(self, max_pixels: int):
    self.max_pixels = max_pixels

  def __call__(self, record: Dict[str, Any]
               ) -> Tuple[Optional[Tuple[str, bytes, bool]],
                          Optional[Tuple[str, str]]]:
    """Returns ((sha, jpeg, converted), None) or (None, (reason, detail))."""
    try:
      data = _read_bytes(record['path'])
    except (OSError, tf.errors.OpError) as e:
      return None, (MISSING_IMAGE, f'cannot read: {e}')
    return self.check_bytes(data)

  def check_bytes(self, data: bytes
                  ) -> Tuple[Optional[Tuple[str, bytes, bool]],
                             Optional[Tuple[str, str]]]:
    """As __call__, for a file's bytes already in memory (an upload)."""
    if not data:
      return None, (EMPTY, '0-byte file')
    try:
      jpeg, converted = to_rgb_jpeg(data, self.max_pixels)
    except _Rejected as e:
      return None, (e.reason, e.detail)
    return (hashlib.sha256(data).hexdigest(), jpeg, converted), None


def _read_bytes(path: str) -> bytes:
  if _is_local(path):  # Plain reads are ~3x faster than GFile locally.
    with open(path, 'rb') as f:
      return f.read()
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read()


class _Rejected(Exception):

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason, self.detail = reason, detail


def to_rgb_jpeg(data: bytes, max_pixels: int = 50_000_000
                ) -> Tuple[bytes, bool]:
  """(RGB JPEG bytes, converted?) for an image file's bytes.

  RGB JPEGs are kept byte for byte (after a full decode, so truncated files
  are caught); PNG and other modes are decoded and re-encoded as RGB JPEG.
  Raises _Rejected with a quarantine reason otherwise.
  """
  try:
    image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise _Rejected(TOO_MANY_PIXELS, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise _Rejected(CORRUPT, f'not a readable image ({e})') from None
  with image:
    if image.format not in SUPPORTED_FORMATS:
      raise _Rejected(UNSUPPORTED, f'format {image.format} (supported: '
                      f'{", ".join(SUPPORTED_FORMATS)})')
    width, height = image.size
    if width * height > max_pixels:
      raise _Rejected(TOO_MANY_PIXELS, f'{width}x{height} pixels exceeds the '
                      f'limit of {max_pixels}')
    if width == 0 or height == 0:
      raise _Rejected(CORRUPT, f'empty image {width}x{height}')
    keep = data.startswith(JPEG_MAGIC) and image.mode == 'RGB'
    if keep:
      # Kept as is: decode to check only.  JPEG's DCT scaling decodes every
      # entropy-coded block (so truncation and corruption are still caught)
      # at 1/8 of the size, several times faster than a full decode.
      image.draft('RGB', (max(1, width // 8), max(1, height // 8)))
    try:
      image.load()  # Decodes all the data: catches truncated / corrupt files.
    except Exception as e:  # pylint: disable=broad-except
      raise _Rejected(CORRUPT, f'cannot decode ({e})') from None
    if keep:
      # PIL tolerates some corrupt entropy data (libjpeg's "premature end of
      # data segment" is a warning to it) that TensorFlow's decoder, the one
      # training and serving use, refuses (found by benchmarks/fuzz_images.py).
      # Same entropy decoding at 1/8 scale: the same verdict, cheaply.
      try:
        tf.io.decode_jpeg(data, channels=3, ratio=8)
      except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        message = re.sub(r'\{\{.*?\}\}|\[Op:.*?\]', '', e.message).strip()
        raise _Rejected(CORRUPT, f'TensorFlow cannot decode it ({message})'
                        ) from None
      return data, False
    if image.mode in ('RGBA', 'LA', 'PA') or (
        image.mode == 'P' and 'transparency' in image.info):
      # Alpha: composite on white, as a viewer shows it.
      rgba = image.convert('RGBA')
      background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
      rgb = Image.alpha_composite(background, rgba).convert('RGB')
    else:
      rgb = image.convert('RGB')
    buf = io.BytesIO()
    rgb.save(buf, format='JPEG', quality=JPEG_QUALITY)
    return buf.getvalue(), True


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
  # Derived, for slicing the evaluation (bands: pipeline/configs.AGE_BANDS).
  feature[features.AGE_BAND_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[configs.age_band(record[features.AGE_KEY]).encode('utf-8')]))
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
  suffix = _INPUT_PATTERNS[layout]
  prefix = pattern[:-len(suffix)].rstrip('/') if pattern.endswith(suffix) else ''
  return os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                      prefix) if prefix else exec_properties[
                          standard_component_specs.INPUT_BASE_KEY]


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
    buckets = []
    for split in split_config.splits:
      buckets.append((buckets[-1] if buckets else 0) + split.hash_buckets)
    names = [s.name for s in split_config.splits]

    read = pipeline | 'ReadAndCheck' >> _ReadAndCheck(listing, config)  # pylint: disable=no-value-for-parameter
    examples = read['examples']
    parts = (examples
             | 'SplitData' >> beam.Partition(
                 lambda ex, n: base_example_gen_executor._PartitionFn(  # pylint: disable=protected-access
                     ex, n, buckets, split_config), len(buckets)))
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


class ImageExampleGen(FileBasedExampleGen):
  """Ingests a dermoscopy image archive into lesion-disjoint splits."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str, layout: str, labels: Sequence[str],
               split_buckets: Dict[str, int],
               label_map: Optional[Dict[str, str]] = None,
               max_pixels: int = 50_000_000,
               max_quarantine_fraction: float = 0.05,
               span_folder: str = '',
               require_every_class_in_every_split: bool = True):
    """Args:
      input_base: the archive's root folder.
      layout: one of 'ham10000', 'isic2019', 'folders', 'csv'.
      labels: the canonical label list; a label's index is its int64 label.
      split_buckets: split name -> hash buckets (relative split size).
      label_map: source label -> canonical label (e.g. {'AK': 'akiec'}).
      max_pixels: images with more pixels are quarantined (decompression
        bombs).
      max_quarantine_fraction: the run fails above this quarantined share.
      span_folder: e.g. 'span-{SPAN}': each span is a folder of input_base in
        the layout; the newest span is ingested (TFX span semantics).
      require_every_class_in_every_split: fail when a class has no example
        in some split.
    """
    if layout not in LISTERS:
      raise ValueError(f'layout must be one of {sorted(LISTERS)}: {layout!r}')
    struct = struct_pb2.Struct()
    struct.update({'layout': layout, 'labels': list(labels),
                   'label_map': dict(label_map or {}),
                   'max_pixels': max_pixels,
                   'max_quarantine_fraction': max_quarantine_fraction,
                   'require_every_class_in_every_split':
                       require_every_class_in_every_split})
    custom_config = example_gen_pb2.CustomConfig()
    custom_config.custom_config.Pack(struct)
    pattern = _INPUT_PATTERNS[layout]
    if span_folder:
      pattern = f'{span_folder.rstrip("/")}/{pattern}'
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name='all', pattern=pattern)]),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=n,
                                                          hash_buckets=b)
                        for n, b in split_buckets.items()],
                partition_feature_name=features.LESION_ID_KEY)),
        custom_config=custom_config)
