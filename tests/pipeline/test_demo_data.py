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


# The other two reference layouts (issue 19): ISIC 2019's two CSVs with SCC,
# and a folder per class with R4's ten names.
OTHER_LAYOUTS = {'isic2019': configs.LABEL_SETS['isic2019'],
                 'folders': tuple(sorted(demo_data.R4_CLASSES))}


@pytest.mark.parametrize('layout', sorted(OTHER_LAYOUTS))
def test_other_layouts_list_every_class_with_nothing_quarantined(
    tmp_path, layout):
  from components import image_example_gen  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / layout)
  counts = demo_data.generate(root, per_class=3, seed=5, layout=layout)
  assert counts == demo_data.class_counts(3, layout)
  assert min(counts.values()) == 3
  labels = OTHER_LAYOUTS[layout]
  assert image_example_gen.archive_labels(root, layout) == list(labels)
  listing = image_example_gen.list_archive(root, layout, labels)
  assert not listing.quarantined and not listing.ignored
  found = collections.Counter(labels[r['label']] for r in listing.records)
  assert found == collections.Counter(counts)


def test_isic2019_archive_has_scc_and_the_release_columns(tmp_path):
  root = str(tmp_path)
  counts = demo_data.generate(root, per_class=4, seed=1, layout='isic2019')
  # The release's imbalance: NV the largest, DF / VASC the rarest.
  assert max(counts, key=counts.get) == 'NV' and counts['SCC'] > counts['DF']
  with open(os.path.join(root, configs.ISIC2019_GROUND_TRUTH)) as f:
    truth = list(csv.DictReader(f))
  assert tuple(truth[0]) == ('image',) + configs.ISIC2019_COLUMN_ORDER
  assert all(r['UNK'] == '0.0' for r in truth)
  assert all(sum(float(r[c]) for c in configs.ISIC2019_COLUMN_ORDER) == 1
             for r in truth)
  with open(os.path.join(root, configs.ISIC2019_METADATA)) as f:
    meta = list(csv.DictReader(f))
  assert [r['image'] for r in meta] == [r['image'] for r in truth]
  assert any(r['lesion_id'] == '' for r in meta)  # As in the release.
  for r in meta[:20]:
    assert os.path.exists(os.path.join(root, demo_data.ISIC2019_IMAGE_DIR,
                                       r['image'] + '.jpg'))


@pytest.mark.parametrize('layout', sorted(OTHER_LAYOUTS))
def test_other_layouts_are_deterministic_and_refuse_to_overwrite(
    tmp_path, layout):
  demo_data.generate(str(tmp_path / 'a'), per_class=1, seed=3, layout=layout)
  demo_data.generate(str(tmp_path / 'b'), per_class=1, seed=3, layout=layout)
  assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
  with pytest.raises(FileExistsError):
    demo_data.generate(str(tmp_path / 'a'), per_class=1, layout=layout)


def test_unknown_layout_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='layout must be one of'):
    demo_data.generate(str(tmp_path), per_class=1, layout='csv')
