"""Property tests (hypothesis) of the ingestion CSV readers and label mapping.

Whatever the metadata CSV holds (arbitrary strings, quoted newlines and
commas, a BOM, Latin-1 bytes, missing, extra or repeated columns, rows with
a field too many or too few), listing an archive either raises a clear
IngestionError or returns a listing in which every row is a record or a
quarantine row, and every record carries exactly the label of its own row.
"""

import csv
import io
import os
import tempfile

from hypothesis import assume
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from components import image_example_gen as ieg
from models import features

LABELS = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
LABEL_MAP = {'AK': 'akiec', 'MEL': 'mel', 'SCC': 'scc'}  # scc: not a label.
HAM_HEADER = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex',
              'localization', 'dataset')

PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Any text a spreadsheet could hold (no NUL: Python's csv refuses it, which
# the raw-text test covers; no lone surrogates: not encodable).
any_text = st.text(st.characters(blacklist_categories=('Cs',),
                                 blacklist_characters='\x00'), max_size=12)
tricky_text = st.one_of(any_text, st.sampled_from(
    ['', ' ', ',', '"', '""', '\n', '\r\n', 'a,b', 'a\nb', '"x,"', '\ufeff',
     'é', 'NaN', '-1', '1e3', ' 45 ']))
file_ids = st.text('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-', min_size=1,
                   max_size=8)
source_labels = st.one_of(st.sampled_from(LABELS + tuple(LABEL_MAP)),
                          st.sampled_from([' nv', 'NV', 'mel ', 'unk', '']),
                          any_text)
ages = st.one_of(st.sampled_from(['', '45', '45.0', ' 80 ', '150', '-3',
                                  'x', 'nan', 'inf']), any_text)


@st.composite
def ham_rows(draw):
  n = draw(st.integers(1, 12))
  rows = []
  for _ in range(n):
    image_id = draw(st.one_of(file_ids, file_ids, tricky_text))
    rows.append([draw(tricky_text), image_id, draw(source_labels),
                 draw(tricky_text), draw(ages), draw(tricky_text),
                 draw(tricky_text), draw(tricky_text)])
  return rows


def _expected_label(source_label):
  name = source_label.strip()
  name = LABEL_MAP.get(name, name)
  return LABELS.index(name) if name in LABELS else None


def _archive(root, csv_bytes, image_ids):
  os.makedirs(os.path.join(root, 'images'))
  for image_id in image_ids:
    # Only ids that can be file names get a (never read) image file.
    if image_id and image_id == image_id.strip() and all(
        c.isalnum() or c in '_-' for c in image_id):
      open(os.path.join(root, 'images', image_id + '.jpg'), 'wb').close()
  with open(os.path.join(root, ieg.HAM10000_CSV), 'wb') as f:
    f.write(csv_bytes)


def _csv_text(header, rows):
  out = io.StringIO(newline='')
  writer = csv.writer(out)
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def _check(listing, rows, header=HAM_HEADER):
  """Reconciled; each record has its own row's label; no row is lost."""
  assert (len(listing.records) + len(listing.quarantined)
          == listing.input_rows + listing.files_without_row)
  assert listing.input_rows == len(rows)
  first_row = {}
  for row in rows:
    if len(row) != len(header):
      continue  # Quarantined: its image id is not trusted either.
    values = dict(zip(header, row))
    first_row.setdefault((values.get('image_id') or '').strip(),
                         (row, values))
  for record in listing.records:
    row, values = first_row[record[features.IMAGE_ID_KEY]]
    expected = _expected_label(values['dx'])
    assert expected is not None
    assert record[features.LABEL_KEY] == expected
    assert LABELS[record[features.LABEL_KEY]] == LABEL_MAP.get(
        values['dx'].strip(), values['dx'].strip())
  quarantined_rows = [q for q in listing.quarantined
                      if q['source'].startswith(ieg.HAM10000_CSV)]
  assert len(listing.records) + len(quarantined_rows) == len(rows)
  assert all(q['reason'] in ieg.REASONS and q['detail']
             for q in listing.quarantined)


def _list(csv_bytes, image_ids):
  with tempfile.TemporaryDirectory() as root:
    _archive(root, csv_bytes, image_ids)
    return ieg.list_archive(root, 'ham10000', LABELS, LABEL_MAP)


@PROPERTY
@given(rows=ham_rows(), bom=st.booleans(), crlf=st.booleans())
def test_each_record_has_its_rows_label_utf8_with_or_without_bom(rows, bom,
                                                                 crlf):
  text = _csv_text(HAM_HEADER, rows)
  if not crlf:
    text = text.replace('\r\n', '\n')
  data = text.encode('utf-8-sig' if bom else 'utf-8')
  listing = _list(data, [r[1] for r in rows])
  _check(listing, rows)


@PROPERTY
@given(rows=ham_rows(), where=st.data())
def test_a_row_with_a_field_too_many_or_too_few_is_quarantined(rows, where):
  broken = where.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1,
                               unique=True))
  for i in broken:
    position = where.draw(st.integers(0, len(rows[i])))
    if where.draw(st.booleans()):
      rows[i].insert(position, where.draw(tricky_text))  # An unquoted comma.
    else:
      del rows[i][min(position, len(rows[i]) - 1)]  # A missing field.
  listing = _list(_csv_text(HAM_HEADER, rows).encode(), [r[1] for r in rows])
  _check(listing, rows)
  malformed = [q for q in listing.quarantined
               if q['reason'] == ieg.MALFORMED_ROW]
  assert len(malformed) == len(broken)


@PROPERTY
@given(rows=ham_rows(), extra=st.lists(
    st.text('abcxyz_ ', min_size=1, max_size=6), max_size=3, unique=True),
       where=st.data())
def test_extra_columns_anywhere_change_no_label(rows, extra, where):
  assume(not set(extra) & set(HAM_HEADER))
  header = list(HAM_HEADER)
  for name in extra:
    position = where.draw(st.integers(0, len(header)))
    header.insert(position, name)
    for row in rows:
      row.insert(position, where.draw(tricky_text))
  listing = _list(_csv_text(header, rows).encode(), [r[header.index(
      'image_id')] for r in rows])
  _check(listing, rows, header)


@PROPERTY
@given(rows=ham_rows(), missing=st.sampled_from(('lesion_id', 'image_id',
                                                  'dx')))
def test_a_missing_required_column_is_a_clear_error(rows, missing):
  i = HAM_HEADER.index(missing)
  header = HAM_HEADER[:i] + HAM_HEADER[i + 1:]
  rows = [r[:i] + r[i + 1:] for r in rows]
  with pytest.raises(ieg.IngestionError, match=f"missing columns.*{missing}"):
    _list(_csv_text(header, rows).encode(), [])


@PROPERTY
@given(rows=ham_rows(), twice=st.sampled_from(HAM_HEADER))
def test_a_column_named_twice_is_a_clear_error(rows, twice):
  # Two 'dx' columns: which one is the label?  Neither is guessed.
  header = HAM_HEADER + (twice,)
  rows = [r + ['mel'] for r in rows]
  with pytest.raises(ieg.IngestionError, match='more than once'):
    _list(_csv_text(header, rows).encode(), [])


@PROPERTY
@given(rows=ham_rows(), accents=st.text(
    st.characters(min_codepoint=0xa0, max_codepoint=0xff), min_size=1,
    max_size=5))
def test_latin1_is_a_clear_error_or_read_with_the_right_labels(rows, accents):
  rows[0][6] = accents  # localization, e.g. 'épaule'.
  data = _csv_text(HAM_HEADER, rows).encode('latin-1', errors='replace')
  try:
    data.decode('utf-8')
  except UnicodeDecodeError:
    with pytest.raises(ieg.IngestionError, match='not UTF-8.*offset'):
      _list(data, [r[1] for r in rows])
  else:  # Some Latin-1 byte pairs are valid UTF-8 too ('Ã©' is 'é').
    rows = [[c.encode('latin-1', errors='replace').decode('utf-8', 'replace')
             if isinstance(c, str) else c for c in r] for r in rows]
    _check(_list(data, [r[1] for r in rows]), rows)


@settings(max_examples=100, deadline=None)
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300)),
       header=st.booleans())
def test_arbitrary_bytes_are_an_ingestion_error_or_a_reconciled_listing(
    body, header):
  data = body.encode('utf-8', 'surrogatepass') if isinstance(body, str) \
      else body
  if header:
    data = (','.join(HAM_HEADER) + '\n').encode() + data
  try:
    listing = _list(data, ['A', 'B'])
  except ieg.IngestionError as e:
    assert ieg.HAM10000_CSV in str(e)
    return
  assert (len(listing.records) + len(listing.quarantined)
          == listing.input_rows + listing.files_without_row)
  for record in listing.records:
    assert 0 <= record[features.LABEL_KEY] < len(LABELS)


@given(source=st.one_of(source_labels, any_text), mapping=st.dictionaries(
    any_text, st.one_of(st.sampled_from(LABELS), any_text), max_size=5))
def test_label_mapping_is_the_map_then_the_list_or_nothing(source, mapping):
  labeler = ieg._Labeler(LABELS, mapping)  # pylint: disable=protected-access
  index = labeler(source)
  name = mapping.get(source, source)
  if name in LABELS:
    assert index == LABELS.index(name)
  else:
    assert index is None
    assert repr(source) in labeler.describe(source)
