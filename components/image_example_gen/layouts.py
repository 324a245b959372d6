"""Archive layouts: listing the ham10000 / isic2019 / folders / csv archives.

Reads the layout's CSVs (``read_csv``), maps source labels to the label list
(``_Labeler``), and lists the records to read and the rows quarantined on
sight (``Listing``); ``archive_labels`` and ``latest_span_root`` answer what
an archive names and which span folder is the newest.
"""

import collections
import csv
import io
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import tensorflow as tf

from components.image_example_gen.images import _is_local
from components.image_example_gen.images import IMAGE_EXTENSIONS
from components.image_example_gen.images import MISSING_IMAGE
from components.image_example_gen.images import UNSUPPORTED
from models import domain
from models import features

HAM10000_CSV = domain.HAM10000_CSV
ISIC2019_GROUND_TRUTH = domain.ISIC2019_GROUND_TRUTH
ISIC2019_METADATA = domain.ISIC2019_METADATA
GENERIC_CSV = domain.GENERIC_CSV
ISIC2019_CLASSES = domain.ISIC2019_COLUMN_ORDER

# Quarantine reasons of the listing (besides images.MISSING_IMAGE and
# images.UNSUPPORTED).
NO_ROW = 'image_without_row'
UNKNOWN_LABEL = 'unknown_label'
DUPLICATE_ID = 'duplicate_image_id'
BAD_AGE = 'invalid_age'
OUTSIDE_ROOT = 'path_outside_root'
# A CSV row with more or fewer fields than its header: its values cannot be
# matched to columns with certainty (an unquoted comma shifts the label).
MALFORMED_ROW = 'malformed_row'
MIN_AGE, MAX_AGE = 0.0, 120.0
_SEX_ALIASES = {'m': 'male', 'male': 'male', 'f': 'female', 'female': 'female',
                '': features.UNKNOWN, 'unknown': features.UNKNOWN}

# The glob (relative to the archive root) that the driver fingerprints to
# decide whether the cached output is still valid.
INPUT_PATTERNS = {'ham10000': '*', 'isic2019': '*', 'csv': '*',
                   'folders': '*/*'}


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
