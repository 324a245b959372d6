"""benchmarks/plain_script_dirs.py: the plain script's folders hold exactly
the run's split images, as links, with their archive rows."""

import csv
import os
import shutil

import pytest

from benchmarks import plain_script_dirs
from models import domain


@pytest.fixture()
def examples(tiny_tfrecords, tmp_path):
  """The tiny Examples with its eval split standing in for test too."""
  root = os.path.dirname(os.path.dirname(tiny_tfrecords[0]))
  out = tmp_path / 'examples'
  shutil.copytree(root, out)
  shutil.copytree(out / 'Split-eval', out / 'Split-test')
  return str(out)


def _rows(folder):
  with open(os.path.join(folder, domain.HAM10000_CSV), newline='') as f:
    return list(csv.DictReader(f))


def test_folders_hold_the_splits_images_as_links(examples, tiny_archive,
                                                 tmp_path):
  train = plain_script_dirs.split_image_ids(examples, 'train')
  evaluation = plain_script_dirs.split_image_ids(examples, 'eval')
  out = str(tmp_path / 'plain')
  counts = plain_script_dirs.write_dirs(examples, tiny_archive, out)
  assert counts == {'train': len(train) + len(evaluation),
                    'test': len(evaluation)}
  archive = {row['image_id']: row for row in _rows(tiny_archive)}
  for group, ids in (('train', train + evaluation), ('test', evaluation)):
    rows = _rows(os.path.join(out, group))
    assert [row['image_id'] for row in rows] == ids
    assert rows == [archive[i] for i in ids]
    jpgs = sorted(f for f in os.listdir(os.path.join(out, group))
                  if f.endswith('.jpg'))
    assert jpgs == sorted(i + '.jpg' for i in ids)
    link = os.path.join(out, group, ids[0] + '.jpg')
    assert os.path.islink(link) and os.path.samefile(
        os.path.realpath(link), [os.path.join(d, ids[0] + '.jpg')
                                 for d, _, fs in os.walk(tiny_archive)
                                 if ids[0] + '.jpg' in fs][0])


def test_an_image_missing_from_the_archive_is_an_error(examples, tiny_archive,
                                                       tmp_path):
  archive = str(tmp_path / 'archive')
  shutil.copytree(tiny_archive, archive)
  victim = plain_script_dirs.split_image_ids(examples, 'test')[0]
  for d, _, files in os.walk(archive):
    if victim + '.jpg' in files:
      os.remove(os.path.join(d, victim + '.jpg'))
  with pytest.raises(ValueError, match=f'1 image ids .*{victim}'):
    plain_script_dirs.write_dirs(examples, archive, str(tmp_path / 'out'))
