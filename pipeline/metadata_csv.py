"""Patient metadata for ``skinlesion predict`` / ``serve --metadata CSV``.

A model that reads age, sex and body site beside the image (``mixed_input``)
gets them from a CSV in one of the two layouts ingestion reads
(``image_example_gen.METADATA_COLUMNS``):

* HAM10000: ``image_id, age, sex, localization`` (``HAM10000_metadata.csv``
  as released: its other columns are ignored);
* ISIC 2019: ``image, age_approx, sex, anatom_site_general``
  (``ISIC_2019_Training_Metadata.csv`` / ``ISIC_2019_Test_Metadata.csv``).

The layout is told by the header.  Values are normalized exactly as
ingestion normalizes them (``image_example_gen.patient_metadata``), so the
model sees at prediction time what it saw in training.  A malformed file is
an error naming the line (wrong field count, a bad age, an image named twice);
an image without a row gets missing metadata (age NaN, 'unknown'), and the
caller reports how many.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import tensorflow as tf

from components import image_example_gen
from models import features

Metadata = Dict[str, object]


class MetadataError(ValueError):
  """The metadata CSV cannot be used; the message names the file and line."""


@dataclasses.dataclass
class MetadataTable:
  path: str
  layout: str                    # 'ham10000' | 'isic2019'
  rows: Dict[str, Metadata]      # image id -> {age, sex, localization}

  def lookup(self, image_ids: Sequence[str]
             ) -> Tuple[List[Metadata], List[str]]:
    """(metadata per image, in order; the ids that had no row: their
    metadata is missing, as ingestion writes a missing value)."""
    missing = [i for i in image_ids if i not in self.rows]
    empty = {features.AGE_KEY: None, features.SEX_KEY: features.UNKNOWN,
             features.LOCALIZATION_KEY: features.UNKNOWN}
    return [dict(self.rows.get(i, empty)) for i in image_ids], missing


def layout_of(path: str, columns: Sequence[str]) -> str:
  """The layout whose metadata columns the header has."""
  for layout, wanted in image_example_gen.METADATA_COLUMNS.items():
    if all(c in columns for c in wanted.values()):
      return layout
  expected = '; '.join(f'{layout}: {", ".join(wanted.values())}'
                       for layout, wanted in
                       image_example_gen.METADATA_COLUMNS.items())
  raise MetadataError(f'{path}: the header {list(columns)} has neither '
                      f'layout\'s metadata columns ({expected})')


def read(path: str) -> MetadataTable:
  """The CSV's rows by image id; MetadataError for a malformed file."""
  if not tf.io.gfile.exists(path):
    raise MetadataError(f'{path}: no such file')
  try:
    columns, rows = image_example_gen.read_csv(path)
  except image_example_gen.IngestionError as e:
    raise MetadataError(str(e)) from None
  layout = layout_of(path, columns)
  names = image_example_gen.METADATA_COLUMNS[layout]
  table: Dict[str, Metadata] = {}
  first_line: Dict[str, int] = {}
  for line, row, problem in rows:
    if problem:
      raise MetadataError(f'{path}: line {line}: {problem}')
    image_id = (row.get(names['image']) or '').strip()
    if not image_id:
      raise MetadataError(f'{path}: line {line}: no {names["image"]}')
    if image_id in table:
      raise MetadataError(f'{path}: line {line}: {image_id!r} already on '
                          f'line {first_line[image_id]}')
    values, problem = image_example_gen.patient_metadata(
        row.get(names[features.AGE_KEY]), row.get(names[features.SEX_KEY]),
        row.get(names[features.LOCALIZATION_KEY]))
    if problem:
      raise MetadataError(f'{path}: line {line}: {problem}')
    table[image_id] = values
    first_line[image_id] = line
  return MetadataTable(path, layout, table)
