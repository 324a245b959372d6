"""The synthetic demo archive: layout, determinism, imbalance, difficulty."""

import csv
import collections
import hashlib
import os

import numpy as np
from PIL import Image
import pytest

from pipeline import configs
from pipeline import demo_data


def _rows(root):
  with open(os.path.join(root, 'HAM10000_metadata.csv'), newline='') as f:
    return list(csv.DictReader(f))


def _digest(root):
  h = hashlib.sha256()
  for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      h.update(name.encode())
      with open(os.path.join(dirpath, name), 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


def test_layout_and_columns(tiny_archive):
  rows = _rows(tiny_archive)
  assert tuple(rows[0].keys()) == demo_data.METADATA_COLUMNS
  assert len(rows) == sum(demo_data.class_counts(7).values())
  for row in rows[:20]:
    with Image.open(os.path.join(tiny_archive, 'images',
                                 row['image_id'] + '.jpg')) as image:
      assert image.format == 'JPEG' and image.mode == 'RGB'
      assert image.size == (demo_data.WIDTH, demo_data.HEIGHT)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  demo_data.generate(str(tmp_path / 'a'), per_class=2, seed=3)
  demo_data.generate(str(tmp_path / 'b'), per_class=2, seed=3)
  demo_data.generate(str(tmp_path / 'c'), per_class=2, seed=4)
  assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
  assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_refuses_to_overwrite(tiny_archive):
  with pytest.raises(FileExistsError):
    demo_data.generate(tiny_archive, per_class=2)


def test_ham10000_like_imbalance_and_metadata_gaps(tiny_archive):
  rows = _rows(tiny_archive)
  counts = collections.Counter(r['dx'] for r in rows)
  assert set(counts) == set(configs.LABELS)
  assert counts['df'] == 7 == min(counts.values())
  assert counts['nv'] == max(counts.values()) > 5 * counts['df']
  assert counts['mel'] > counts['akiec'] > counts['df']
  per_lesion = collections.Counter(r['lesion_id'] for r in rows)
  assert max(per_lesion.values()) >= 2  # Several images of some lesions.
  for lesion, n in per_lesion.items():
    if n > 1:  # One lesion, one diagnosis and one patient.
      group = [r for r in rows if r['lesion_id'] == lesion]
      assert len({(r['dx'], r['age'], r['sex']) for r in group}) == 1
  big = _rows_of_bigger_archive()
  assert any(r['age'] == '' for r in big)
  assert any(r['sex'] == 'unknown' for r in big)
  assert any(r['localization'] == 'unknown' for r in big)
  ages = [float(r['age']) for r in big if r['age']]
  assert 0 <= min(ages) and max(ages) <= 85


_BIG = {}


def _rows_of_bigger_archive():
  if 'rows' not in _BIG:
    import tempfile  # pylint: disable=g-import-not-at-top
    root = tempfile.mkdtemp()
    demo_data.generate(root, per_class=30, seed=0)
    _BIG['root'] = root
    _BIG['rows'] = _rows(root)
  return _BIG['rows']


def test_classes_are_learnable_but_not_trivially():
  """A linear model on 16x16 thumbnails: well above chance, far from 1.0."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import balanced_accuracy_score  # pylint: disable=g-import-not-at-top
  rows = _rows_of_bigger_archive()
  x, y, lesions = [], [], []
  for r in rows:
    with Image.open(os.path.join(_BIG['root'], 'images',
                                 r['image_id'] + '.jpg')) as image:
      x.append(np.asarray(image.resize((16, 16)), np.float32).ravel() / 255)
    y.append(configs.LABELS.index(r['dx']))
    lesions.append(r['lesion_id'])
  x, y = np.array(x), np.array(y)
  test = np.array([int(hashlib.md5(l.encode()).hexdigest(), 16) % 4 == 0
                   for l in lesions])  # Lesion-disjoint hold-out.
  model = LogisticRegression(max_iter=300, class_weight='balanced')
  model.fit(x[~test], y[~test])
  score = balanced_accuracy_score(y[test], model.predict(x[test]))
  assert 1 / 7 + 0.1 < score < 0.9, score
