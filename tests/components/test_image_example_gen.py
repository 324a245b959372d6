"""ImageExampleGen: layouts, label maps, quarantine, reconciliation, splits."""

import collections
import csv
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import image_example_gen as ieg
from models import features
from models import preprocessing

LABELS = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
HAM_HEADER = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex',
              'localization', 'dataset')


def _image(seed=0, mode='RGB', fmt='JPEG', size=(24, 18)):
  pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3),
                                                dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def _huge_png_header(width=30000, height=30000):
  """A valid PNG signature + IHDR claiming a huge image (a bomb's header)."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = b'IHDR' + ihdr
  return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk
          + struct.pack('>I', zlib.crc32(chunk) & 0xffffffff)
          + b'\x00\x00\x00\x00IEND\xaeB`\x82')


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _write_csv(path, header, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def _run_executor(root, tmp_path, layout='ham10000', labels=LABELS, **kwargs):
  component = ieg.ImageExampleGen(
      input_base=str(root), layout=layout, labels=labels,
      split_buckets={'train': 2, 'eval': 1, 'test': 1}, **kwargs)
  exec_properties = {
      k: (proto_utils.proto_to_json(v) if hasattr(v, 'DESCRIPTOR') else v)
      for k, v in component.exec_properties.items()}
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'examples')
  ieg.Executor().Do({}, {'examples': [examples]}, exec_properties)
  with open(os.path.join(examples.uri, ieg.REPORT_FILE)) as f:
    report = json.load(f)
  with open(os.path.join(examples.uri, ieg.QUARANTINE_FILE)) as f:
    quarantine = list(csv.DictReader(f))
  return examples, report, quarantine


def _read_split_examples(examples):
  out = {}
  for split in artifact_utils.decode_split_names(examples.split_names):
    uri = artifact_utils.get_split_uri([examples], split)
    out[split] = [tf.train.Example.FromString(r.numpy()) for r in
                  preprocessing.read_examples([os.path.join(uri, '*')])]
  return out


@pytest.fixture
def bad_archive(tmp_path):
  """A HAM10000-layout archive with one input for every quarantine reason."""
  root = tmp_path / 'archive'
  rows = []
  images = root / 'HAM10000_images_part_1'
  # 40 good images of two classes, one lesion each (every split gets both).
  for i in range(40):
    rows.append((f'L{i}', f'G{i}', 'mel' if i % 2 else 'nv', '', '50', 'male',
                 'back', 'rosendahl'))
    _write(str(images / f'G{i}.jpg'), _image(i))
  good = _image(1)
  cases = {
      # image_id: (lesion, dx, age, bytes or None, expected reason)
      'C_corrupt': ('LC1', 'nv', '40', b'\xff\xd8\xff' + os.urandom(300),
                    ieg.CORRUPT),
      'C_truncated': ('LC2', 'nv', '40', _image(99)[:300], ieg.CORRUPT),
      'C_empty': ('LC3', 'nv', '40', b'', ieg.EMPTY),
      'C_gif': ('LC4', 'nv', '40', _image(5, mode='P', fmt='GIF'),
                ieg.UNSUPPORTED),
      'C_bomb': ('LC5', 'nv', '40', _huge_png_header(), ieg.TOO_MANY_PIXELS),
      'C_missing': ('LC6', 'nv', '40', None, ieg.MISSING_IMAGE),
      'C_label': ('LC7', 'scc', '40', _image(7), ieg.UNKNOWN_LABEL),
      'C_age': ('LC8', 'nv', '150', _image(8), ieg.BAD_AGE),
      'C_leak': ('LC9', 'nv', '40', good, ieg.SAME_BYTES_OTHER_LESION),
  }
  for image_id, (lesion, dx, age, data, _) in cases.items():
    rows.append((lesion, image_id, dx, '', age, 'female', 'face', 'x'))
    if data is not None:
      ext = '.gif' if image_id == 'C_gif' else (
          '.png' if image_id == 'C_bomb' else '.jpg')
      _write(str(images / (image_id + ext)), data)
  # Duplicate image_id: a second row for G0.
  rows.append(('L0', 'G0', 'nv', '', '50', 'male', 'back', 'rosendahl'))
  # An image no row names.
  _write(str(root / 'extra' / 'ORPHAN.jpg'), _image(77))
  # A link inside the root that resolves outside it.
  outside = tmp_path / 'outside.jpg'
  _write(str(outside), _image(55))
  os.symlink(outside, images / 'C_outside.jpg')
  rows.append(('LC10', 'C_outside', 'nv', '', '40', 'male', 'back', 'x'))
  # A row with one field too many: its columns cannot be trusted.
  rows.append(('LC11', 'C_extra', 'nv', '', '40', 'male', 'back', 'x', 'y'))
  _write(str(images / 'C_extra.jpg'), _image(11))
  # The same bytes twice within one lesion: reported, kept.
  rows.append(('L1', 'G1_copy', 'mel', '', '50', 'male', 'back', 'rosendahl'))
  _write(str(images / 'G1_copy.jpg'), good)
  # Converted, not quarantined: grayscale, CMYK, alpha PNG, plain PNG.
  for i, (mode, fmt) in enumerate((('L', 'JPEG'), ('CMYK', 'JPEG'),
                                   ('RGBA', 'PNG'), ('RGB', 'PNG'))):
    image_id = f'V{i}'
    rows.append((f'LV{i}', image_id, 'nv', '', '30', 'male', 'back', 'x'))
    _write(str(images / f'{image_id}.{fmt.lower().replace("jpeg", "jpg")}'),
           _image(200 + i, mode=mode, fmt=fmt))
  _write_csv(str(root / ieg.HAM10000_CSV), HAM_HEADER, rows)
  expected = {image_id: reason for image_id, (*_, reason) in cases.items()}
  expected.update({'G0': ieg.DUPLICATE_ID, 'ORPHAN': ieg.NO_ROW,
                   'C_outside': ieg.OUTSIDE_ROOT,
                   'C_extra': ieg.MALFORMED_ROW})
  return root, len(rows), expected


def test_every_bad_input_is_quarantined_with_its_reason(bad_archive, tmp_path):
  root, n_rows, expected = bad_archive
  examples, report, quarantine = _run_executor(
      root, tmp_path, labels=('mel', 'nv'), max_quarantine_fraction=1.0)
  got = {row['image_id']: row['reason'] for row in quarantine}
  assert got == expected
  assert set(got.values()) == set(ieg.REASONS)  # Every reason is exercised.
  assert all(row['detail'] for row in quarantine)
  # Reconciliation: every input is an example or a quarantine row.
  assert report['input_records'] == n_rows + 1  # + the orphan image file.
  assert report['examples'] + report['quarantined'] == report['input_records']
  splits = _read_split_examples(examples)
  assert sum(len(v) for v in splits.values()) == report['examples']
  ids = {ex.features.feature[features.IMAGE_ID_KEY].bytes_list.value[0]
         .decode() for exs in splits.values() for ex in exs}
  assert not ids & set(expected) - {'G0'}
  assert {'V0', 'V1', 'V2', 'V3', 'G1', 'G1_copy'} <= ids
  assert report['converted_to_rgb_jpeg'] == 4
  assert report['identical_images_within_a_lesion'] == [
      {'image_ids': ['G1', 'G1_copy'], 'lesion_id': 'L1',
       'sha256': report['identical_images_within_a_lesion'][0]['sha256']}]
  # Converted images are real RGB JPEGs.
  for exs in splits.values():
    for ex in exs:
      data = ex.features.feature[features.IMAGE_KEY].bytes_list.value[0]
      assert data.startswith(ieg.JPEG_MAGIC)
  assert examples.get_string_custom_property('labels') == '["mel", "nv"]'
  with open(os.path.join(examples.uri, ieg.LABELS_FILE)) as f:
    assert f.read().split() == ['mel', 'nv']


def test_too_much_quarantine_fails_the_run_naming_the_report(bad_archive,
                                                             tmp_path):
  root, _, _ = bad_archive
  with pytest.raises(Exception) as error:
    _run_executor(root, tmp_path, labels=('mel', 'nv'))  # Default limit 5%.
  message = str(error.value)
  assert 'more than the limit of 5.0%' in message
  assert ieg.QUARANTINE_FILE in message and ieg.REPORT_FILE in message
  assert os.path.exists(tmp_path / 'examples' / ieg.QUARANTINE_FILE)


def test_a_class_missing_from_a_split_fails_naming_it(tmp_path):
  root = tmp_path / 'archive'
  rows = [(f'L{i}', f'G{i}', 'nv', '', '50', 'male', 'back', 'x')
          for i in range(30)]
  rows.append(('LONE', 'DF0', 'df', '', '50', 'male', 'back', 'x'))
  for i, image_id in enumerate(r[1] for r in rows):
    _write(str(root / 'images' / f'{image_id}.jpg'), _image(i))
  _write_csv(str(root / ieg.HAM10000_CSV), HAM_HEADER, rows)
  with pytest.raises(Exception, match=r"'df' \(1 examples in all\) has none"):
    _run_executor(root, tmp_path)
  # Toy data may opt out.
  _, report, _ = _run_executor(root, tmp_path / 'b',
                               require_every_class_in_every_split=False)
  assert report['examples'] == 31


def test_a_class_of_another_label_set_missing_from_a_split_fails_naming_it(
    tmp_path):
  # R4's folder names, not HAM10000's: the check reads the run's list.
  root = tmp_path / 'archive'
  for i in range(30):
    _write(str(root / 'Eksim' / f'e{i}.jpg'), _image(i))
  _write(str(root / 'Tahi Lalat' / 'lone.jpg'), _image(99))
  with pytest.raises(Exception,
                     match=r"'Tahi Lalat' \(1 examples in all\) has none"):
    _run_executor(root, tmp_path, layout='folders',
                  labels=['Eksim', 'Tahi Lalat'])


def test_lesion_disjoint_deterministic_splits_and_bytes(tiny_archive, tmp_path):
  runs = []
  for name in ('a', 'b'):
    examples, report, _ = _run_executor(tiny_archive, tmp_path / name,
                                        require_every_class_in_every_split=False)
    lesion_splits = collections.defaultdict(set)
    for split, exs in _read_split_examples(examples).items():
      for ex in exs:
        lesion = ex.features.feature[features.LESION_ID_KEY].bytes_list.value[0]
        lesion_splits[lesion].add(split)
    assert all(len(s) == 1 for s in lesion_splits.values())
    assert report['lesions_in_several_splits'] == []
    files = {}  # Every output file's bytes: TFRecords, report, quarantine.
    for directory, _, names in os.walk(examples.uri):
      for name in names:
        path = os.path.join(directory, name)
        with open(path, 'rb') as f:
          # The report names its own folder.
          files[os.path.relpath(path, examples.uri)] = f.read().replace(
              examples.uri.encode(), b'<uri>')
    runs.append(({k: sorted(v) for k, v in lesion_splits.items()}, files))
  assert runs[0][0] == runs[1][0]
  # Same data, same config: byte-identical TFRecords (and reports).
  assert any(name.startswith('Split-') for name in runs[0][1])
  assert sorted(runs[0][1]) == sorted(runs[1][1])
  for name, data in runs[0][1].items():
    assert data == runs[1][1][name], name


def test_isic2019_layout_with_label_map(tmp_path):
  root = tmp_path / 'isic'
  classes = list(ieg.ISIC2019_CLASSES)
  truth, meta = [], []
  for i, cls in enumerate(['MEL', 'NV', 'AK', 'SCC', 'NV']):
    row = [f'ISIC_{i}'] + ['1.0' if c == cls else '0.0' for c in classes]
    truth.append(row)
    meta.append([f'ISIC_{i}', '55' if i else '', 'anterior torso',
                 f'IL{i // 2}', 'female' if i % 2 else 'male'])
    _write(str(root / 'ISIC_2019_Training_Input' / f'ISIC_{i}.jpg'), _image(i))
  _write_csv(str(root / ieg.ISIC2019_GROUND_TRUTH), ['image'] + classes, truth)
  _write_csv(str(root / ieg.ISIC2019_METADATA),
             ['image', 'age_approx', 'anatom_site_general', 'lesion_id', 'sex'],
             meta)
  listing = ieg.list_archive(str(root), 'isic2019', LABELS,
                             {'MEL': 'mel', 'NV': 'nv', 'AK': 'akiec'})
  got = [(r[features.IMAGE_ID_KEY], LABELS[r[features.LABEL_KEY]],
          r[features.LESION_ID_KEY], r[features.AGE_KEY])
         for r in listing.records]
  assert got == [('ISIC_0', 'mel', 'IL0', None), ('ISIC_1', 'nv', 'IL0', 55.0),
                 ('ISIC_2', 'akiec', 'IL1', 55.0), ('ISIC_4', 'nv', 'IL2', 55.0)]
  assert listing.records[0][features.LOCALIZATION_KEY] == 'anterior torso'
  assert [(q['image_id'], q['reason']) for q in listing.quarantined] == [
      ('ISIC_3', ieg.UNKNOWN_LABEL)]
  assert "'SCC'" in listing.quarantined[0]['detail']


def test_folders_layout_any_class_names(tmp_path):
  root = tmp_path / 'skinscan'
  names = ('Melanoma', 'Tahi Lalat', 'Kutil')
  for i, name in enumerate(names):
    _write(str(root / name / f'a{i}.jpg'), _image(i))
  _write(str(root / 'Kutil' / 'notes.txt'), b'not an image')
  _write(str(root / 'Eksim' / 'b.jpg'), _image(9))  # Not in the label list.
  listing = ieg.list_archive(str(root), 'folders', names)
  assert sorted((r[features.IMAGE_ID_KEY], r[features.LABEL_KEY])
                for r in listing.records) == [
                    ('Kutil/a2', 2), ('Melanoma/a0', 0), ('Tahi Lalat/a1', 1)]
  assert sorted((q['image_id'], q['reason']) for q in listing.quarantined) == [
      ('Eksim/b', ieg.UNKNOWN_LABEL), ('Kutil/notes', ieg.UNSUPPORTED)]
  assert listing.files_without_row == 5
  assert all(r[features.LESION_ID_KEY] == r[features.IMAGE_ID_KEY]
             for r in listing.records)


def test_generic_csv_layout(tmp_path):
  root = tmp_path / 'csvdata'
  _write(str(root / 'img' / 'a.jpg'), _image(1))
  _write(str(root / 'img' / 'b.png'), _image(2, fmt='PNG'))
  _write(str(tmp_path / 'secret.jpg'), _image(3))
  _write_csv(str(root / ieg.GENERIC_CSV), ['path', 'label', 'age', 'sex'], [
      ('img/a.jpg', 'MEL', '61', 'M'),
      ('img/b.png', 'nv', '', 'F'),
      ('../secret.jpg', 'nv', '', ''),
      ('img/none.jpg', 'nv', '', ''),
  ])
  listing = ieg.list_archive(str(root), 'csv', LABELS, {'MEL': 'mel'})
  assert [(r[features.IMAGE_ID_KEY], LABELS[r[features.LABEL_KEY]],
           r[features.SEX_KEY]) for r in listing.records] == [
               ('img/a.jpg', 'mel', 'male'), ('img/b.png', 'nv', 'female')]
  assert [(q['image_id'], q['reason']) for q in listing.quarantined] == [
      ('../secret.jpg', ieg.OUTSIDE_ROOT), ('img/none.jpg', ieg.MISSING_IMAGE)]


def test_layout_errors_are_clear(tmp_path):
  with pytest.raises(ieg.IngestionError, match='HAM10000_metadata.csv not f'):
    ieg.list_archive(str(tmp_path), 'ham10000', LABELS)
  with pytest.raises(ieg.IngestionError, match=r"columns \['path', 'label'\]"):
    ieg.list_archive(str(tmp_path), 'csv', LABELS)
  with pytest.raises(ieg.IngestionError, match='layout must be one of'):
    ieg.list_archive(str(tmp_path), 'zip', LABELS)
  _write_csv(str(tmp_path / ieg.HAM10000_CSV), ['image_id', 'dx'], [])
  with pytest.raises(ieg.IngestionError, match=r"missing columns \['lesion_id'\]"):
    ieg.list_archive(str(tmp_path), 'ham10000', LABELS)


def test_utf8_bom_and_sex_aliases(tmp_path):
  root = tmp_path / 'bom'
  _write(str(root / 'images' / 'A.jpg'), _image(1))
  text = ('\ufefflesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n'
          'L1,A,mel,histo,45.0,F,back,x\n')
  _write(str(root / ieg.HAM10000_CSV), text.encode('utf-8'))
  listing = ieg.list_archive(str(root), 'ham10000', LABELS)
  assert listing.records[0][features.SEX_KEY] == 'female'
  assert listing.records[0][features.LABEL_KEY] == 4
