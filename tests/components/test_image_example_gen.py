"""ImageExampleGen: listing, image handling, and the executor with Beam."""

import collections
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from components import image_example_gen as ieg
from models import features
from models import preprocessing

LABELS = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
HEADER = 'lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n'


def _jpeg(seed=0, mode='RGB', fmt='JPEG', size=(20, 15)):
  pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3),
                                                dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _ham_archive(root, rows, extra_files=()):
  """rows: (lesion, image, dx, age); images split over two part folders."""
  lines = [HEADER]
  for i, (lesion, image, dx, age) in enumerate(rows):
    lines.append(f'{lesion},{image},{dx},histo,{age},male,back,rosendahl\n')
    part = 'HAM10000_images_part_1' if i % 2 else 'HAM10000_images_part_2'
    _write(os.path.join(root, part, image + '.jpg'), _jpeg(i))
  for name in extra_files:
    _write(os.path.join(root, name), _jpeg(99))
  with open(os.path.join(root, ieg.METADATA_CSV), 'w') as f:
    f.writelines(lines)
  return str(root)


def test_ham10000_listing_reads_both_part_folders(tmp_path):
  root = _ham_archive(tmp_path, [('L1', 'I1', 'mel', '45.0'),
                                 ('L1', 'I2', 'mel', '45.0'),
                                 ('L2', 'I3', 'nv', '')],
                      extra_files=['images_extra/I9.jpg'])
  records, unlisted = ieg.list_ham10000(root, LABELS)
  assert [r[features.IMAGE_ID_KEY] for r in records] == ['I1', 'I2', 'I3']
  assert [r[features.LABEL_KEY] for r in records] == [4, 4, 5]
  assert records[2][features.AGE_KEY] is None
  assert records[0][features.AGE_KEY] == 45.0
  assert unlisted == [os.path.join(root, 'images_extra', 'I9.jpg')]


@pytest.mark.parametrize('rows,message', [
    ([('L1', 'I1', 'scc', '')], "label 'scc' is not in the label list"),
    ([('L1', 'I1', 'mel', 'old')], "age 'old' is not a number"),
])
def test_ham10000_bad_rows_fail_with_a_clear_message(tmp_path, rows, message):
  root = _ham_archive(tmp_path, rows)
  with pytest.raises(ieg.IngestionError, match=message):
    ieg.list_ham10000(root, LABELS)


def test_ham10000_missing_image_and_duplicates(tmp_path):
  root = _ham_archive(tmp_path, [('L1', 'I1', 'mel', '')])
  with open(os.path.join(root, ieg.METADATA_CSV), 'a') as f:
    f.write('L2,I404,nv,histo,,male,back,x\n')
  with pytest.raises(ieg.IngestionError, match="no image file for 'I404'"):
    ieg.list_ham10000(root, LABELS)
  root2 = _ham_archive(tmp_path / 'b', [('L1', 'I1', 'mel', '')])
  with open(os.path.join(root2, ieg.METADATA_CSV), 'a') as f:
    f.write('L1,I1,mel,histo,,male,back,x\n')
  with pytest.raises(ieg.IngestionError, match="duplicate image_id 'I1'"):
    ieg.list_ham10000(root2, LABELS)
  with pytest.raises(ieg.IngestionError, match='metadata CSV'):
    ieg.list_ham10000(str(tmp_path / 'empty'), LABELS)


def test_folders_listing(tmp_path):
  _write(str(tmp_path / 'mel' / 'a.jpg'), _jpeg(1))
  _write(str(tmp_path / 'nv' / 'b.png'), _jpeg(2, fmt='PNG'))
  _write(str(tmp_path / 'nv' / 'notes.txt'), b'hello')
  records, ignored = ieg.list_folders(str(tmp_path), LABELS)
  assert [(r[features.IMAGE_ID_KEY], r[features.LABEL_KEY]) for r in records] \
      == [('mel/a', 4), ('nv/b', 5)]
  assert records[0][features.LESION_ID_KEY] == 'mel/a'
  assert ignored == [str(tmp_path / 'nv' / 'notes.txt')]
  _write(str(tmp_path / 'scc' / 'c.jpg'), _jpeg(3))
  with pytest.raises(ieg.IngestionError, match='scc'):
    ieg.list_folders(str(tmp_path), LABELS)


def test_rgb_jpeg_kept_other_inputs_converted_corrupt_rejected():
  data = _jpeg(1)
  assert ieg.to_rgb_jpeg(data, 'x') == (data, False)
  for other in (_jpeg(2, fmt='PNG'), _jpeg(3, mode='L'),
                _jpeg(4, mode='RGBA', fmt='PNG'), _jpeg(5, mode='CMYK')):
    converted, changed = ieg.to_rgb_jpeg(other, 'x')
    assert changed
    with Image.open(io.BytesIO(converted)) as image:
      assert image.format == 'JPEG' and image.mode == 'RGB'
  with pytest.raises(ieg.IngestionError, match='bad.jpg: not a readable image'):
    ieg.to_rgb_jpeg(data[:len(data) // 3] + b'garbage', 'bad.jpg')
  with pytest.raises(ieg.IngestionError):
    ieg.to_rgb_jpeg(b'', 'empty.jpg')


def test_executor_writes_lesion_disjoint_splits_and_a_reconciled_report(
    tiny_archive, tmp_path):
  component = ieg.ImageExampleGen(input_base=tiny_archive, layout='ham10000',
                                  labels=LABELS,
                                  split_buckets={'train': 3, 'eval': 1,
                                                 'test': 1})
  exec_properties = {
      k: (proto_utils.proto_to_json(v) if hasattr(v, 'DESCRIPTOR') else v)
      for k, v in component.exec_properties.items()}
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'examples')
  ieg.Executor().Do({}, {'examples': [examples]}, exec_properties)

  with open(os.path.join(examples.uri, ieg.REPORT_FILE)) as f:
    report = json.load(f)
  lesion_splits = collections.defaultdict(set)
  total = 0
  for split in artifact_utils.decode_split_names(examples.split_names):
    uri = artifact_utils.get_split_uri([examples], split)
    for record in preprocessing.read_examples([os.path.join(uri, '*')]):
      ex = tf.train.Example.FromString(record.numpy())
      f = ex.features.feature
      lesion_splits[f[features.LESION_ID_KEY].bytes_list.value[0]].add(split)
      assert f[features.IMAGE_KEY].bytes_list.value[0][:3] == ieg.JPEG_MAGIC
      total += 1
  with open(os.path.join(tiny_archive, ieg.METADATA_CSV)) as f:
    rows = sum(1 for _ in f) - 1
  assert total == rows == report['examples'] == report['input_records']
  assert all(len(s) == 1 for s in lesion_splits.values())
  assert report['lesions_in_several_splits'] == []
  assert sum(report['examples_per_split'].values()) == rows
  assert report['labels'] == list(LABELS)
