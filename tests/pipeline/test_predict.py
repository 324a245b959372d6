"""`skinlesion predict` on a version directory laid out as MobilePusher's.

The version holds the session's trained SavedModel, a float16 .tflite
converted from it, labels.txt and a manifest with every file's sha256 and
size (release.build_manifest / file_inventory, as the pusher writes them).
"""

import csv
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mobile_export import release
from models import features
from pipeline import cli
from pipeline import configs
from pipeline import predict
from tests.conftest import publish
from tests.conftest import write_split_jpegs


def read_csv(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


@pytest.fixture(scope='module')
def served(trained_model, tiny_tfrecords, tmp_path_factory):
  """(serving base dir, latest version dir, [(jpeg path, label)])."""
  base = str(tmp_path_factory.mktemp('serving'))
  publish(base, '100', trained_model.serving_model_dir, with_tflite=False)
  latest = publish(base, '1000', trained_model.serving_model_dir)
  images = write_split_jpegs(tiny_tfrecords[1],
                             str(tmp_path_factory.mktemp('images')))
  return base, latest, images[:12]


@pytest.fixture()
def image_dir(served, tmp_path):
  directory = tmp_path / 'images'
  directory.mkdir()
  for path, _ in served[2]:
    shutil.copy(path, directory)
  (directory / 'LICENSE.txt').write_text('not an image')  # ignored
  return str(directory)


def _savedmodel_probabilities(version_dir, jpeg_paths):
  """serving_default on tf.Examples of the same JPEGs: the Evaluator's path."""
  loaded = tf.saved_model.load(version_dir)
  examples = []
  for path in jpeg_paths:
    with open(path, 'rb') as f:
      examples.append(tf.train.Example(features=tf.train.Features(feature={
          features.IMAGE_KEY: tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[f.read()]))}))
                      .SerializeToString())
  return loaded.signatures[features.EXAMPLE_SIGNATURE](
      examples=tf.constant(examples))[features.PREDICTION_KEY].numpy()


def test_labels_format_matches_the_evaluators_signature(served, image_dir,
                                                        tmp_path):
  base, latest, images = served
  out = str(tmp_path / 'preds.csv')
  # The base directory: the latest version is used.
  assert cli.main(['predict', '--model', base, '--images', image_dir,
                   '--out', out]) == 0
  header, rows = read_csv(out)
  assert header == ['image'] + list(configs.LABELS)
  assert [r[0] for r in rows] == [
      os.path.splitext(os.path.basename(p))[0] for p, _ in images]
  probs = np.array([[float(x) for x in r[1:]] for r in rows])
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  expected = _savedmodel_probabilities(latest, [p for p, _ in images])
  np.testing.assert_allclose(probs, expected, atol=1e-6)
  assert not os.path.exists(out + '.errors.csv')


def test_isic_format_columns_and_tflite(served, image_dir, tmp_path):
  base, latest, _ = served
  labels_csv = str(tmp_path / 'labels.csv')
  isic_csv = str(tmp_path / 'isic.csv')
  assert cli.main(['predict', '--model', latest, '--images', image_dir,
                   '--out', labels_csv, '--tflite']) == 0
  assert cli.main(['predict', '--model', latest, '--images', image_dir,
                   '--out', isic_csv, '--format', 'isic',
                   '--tflite', 'float16']) == 0
  header, rows = read_csv(isic_csv)
  assert header == ['image', 'MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC']
  label_header, label_rows = read_csv(labels_csv)
  # The same probabilities, columns renamed and reordered via configs.
  for row, label_row in zip(rows, label_rows):
    by_label = dict(zip(label_header[1:], label_row[1:]))
    assert row[0] == label_row[0]
    assert row[1:] == [by_label[label] for label in
                       ('mel', 'nv', 'bcc', 'akiec', 'bkl', 'df', 'vasc')]
  # float16 .tflite vs the SavedModel: close, not identical.
  assert cli.main(['predict', '--model', base, '--images', image_dir,
                   '--out', str(tmp_path / 'saved.csv')]) == 0
  _, saved_rows = read_csv(str(tmp_path / 'saved.csv'))
  lite = np.array([[float(x) for x in r[1:]] for r in label_rows])
  full = np.array([[float(x) for x in r[1:]] for r in saved_rows])
  assert np.abs(lite - full).max() < 0.02


def test_a_version_without_the_tflite_is_refused_for_tflite(served, image_dir,
                                                            tmp_path, capsys):
  base, _, _ = served
  code = cli.main(['predict', '--model', os.path.join(base, '100'),
                   '--images', image_dir, '--out', str(tmp_path / 'p.csv'),
                   '--tflite'])
  assert code == 1
  assert 'model_float16.tflite' in capsys.readouterr().err


def _copy_version(served, tmp_path):
  _, latest, _ = served
  copy = str(tmp_path / 'serving' / '1000')
  shutil.copytree(latest, copy)
  return copy


@pytest.mark.parametrize('damage', ['altered', 'truncated', 'missing',
                                    'added'])
def test_tampered_or_truncated_versions_are_refused(served, image_dir,
                                                    tmp_path, capsys, damage):
  version = _copy_version(served, tmp_path)
  variables = [f for f in os.listdir(os.path.join(version, 'variables'))
               if f.startswith('variables.data')][0]
  victim = os.path.join(version, 'variables', variables)
  if damage == 'altered':  # Same size, one byte changed.
    with open(victim, 'r+b') as f:
      f.seek(10)
      byte = f.read(1)
      f.seek(10)
      f.write(bytes([byte[0] ^ 0xFF]))
    pattern = 'sha256'
  elif damage == 'truncated':
    with open(victim, 'r+b') as f:
      f.truncate(os.path.getsize(victim) // 2)
    pattern = 'truncated'
  elif damage == 'missing':
    os.remove(victim)
    pattern = 'missing'
  else:
    victim = os.path.join(version, 'extra.tflite')
    with open(victim, 'wb') as f:
      f.write(b'x')
    pattern = 'not in the manifest'
  with pytest.raises(release.VersionIntegrityError, match=pattern) as error:
    release.verify_version(version)
  assert victim in str(error.value)
  out = str(tmp_path / 'p.csv')
  assert cli.main(['predict', '--model', os.path.dirname(version),
                   '--images', image_dir, '--out', out]) == 1
  assert 'Refusing the model' in capsys.readouterr().err
  assert not os.path.exists(out)


def test_verify_version_accepts_an_intact_version(served):
  manifest = release.verify_version(served[1])
  assert manifest['model_version'] == '1000'
  with pytest.raises(release.VersionIntegrityError, match='no manifest.json'):
    release.verify_version(os.path.join(served[1], 'variables'))


def test_unreadable_images_are_listed_and_exit_2(served, image_dir, tmp_path,
                                                 capsys):
  base, _, images = served
  with open(images[0][0], 'rb') as f:
    data = f.read()
  with open(os.path.join(image_dir, 'zz_truncated.jpg'), 'wb') as f:
    f.write(data[:len(data) // 3])
  with open(os.path.join(image_dir, 'zz_text.png'), 'w') as f:
    f.write('not a png')
  out = str(tmp_path / 'p.csv')
  assert cli.main(['predict', '--model', base, '--images', image_dir,
                   '--out', out]) == 2
  err = capsys.readouterr().err
  assert 'zz_truncated.jpg' in err and 'zz_text.png' in err
  _, rows = read_csv(out)
  assert len(rows) == len(images)  # Every readable image has its row.
  assert not any(r[0].startswith('zz_') for r in rows)
  _, errors = read_csv(out + '.errors.csv')
  assert sorted(os.path.basename(e[0]) for e in errors) == [
      'zz_text.png', 'zz_truncated.jpg']
  assert all(e[1] == 'corrupt_image' for e in errors), errors


def test_isic_columns_need_the_isic_labels():
  assert [c for c, _ in predict.columns(configs.LABELS, 'isic')] == list(
      configs.ISIC2018_COLUMN_ORDER)
  with pytest.raises(ValueError, match='ISIC 2018.*ISIC 2019'):
    predict.columns(('a', 'b'), 'isic')


def test_isic2019_labels_write_the_nine_isic2019_columns(tmp_path):
  labels = configs.LABEL_SETS['isic2019']  # AK BCC BKL DF MEL NV SCC VASC
  cols = predict.columns(labels, 'isic')
  assert [c for c, _ in cols] == ['MEL', 'NV', 'BCC', 'AK', 'BKL', 'DF',
                                  'VASC', 'SCC', 'UNK']
  probabilities = np.eye(8, dtype=np.float32)[[4, 6]]  # a MEL, an SCC
  out = tmp_path / 'preds.csv'
  predict.write_csv(predict.Predictions(
      str(tmp_path), list(labels), ['ISIC_1', 'ISIC_2'], probabilities, []),
                    str(out), 'isic')
  rows = out.read_text().splitlines()
  assert rows[0] == 'image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK'
  assert rows[1] == 'ISIC_1,1,0,0,0,0,0,0,0,0'
  assert rows[2] == 'ISIC_2,0,0,0,0,0,0,0,1,0'
