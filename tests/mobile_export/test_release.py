"""Manifest contents and the atomic publication of a version directory."""

import datetime
import hashlib
import json
import os
import threading
import time

import pytest

from mobile_export import release


def _fill(files):
  def fill(staging):
    for name, content in files.items():
      path = os.path.join(staging, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'wb') as f:
        f.write(content)
  return fill


def test_inventory_has_sha256_and_size_of_every_file_but_the_manifest(
    tmp_path):
  _fill({'a.bin': b'abc', 'variables/v.index': b'12345',
         release.MANIFEST_FILE: b'{}'})(str(tmp_path))
  inventory = release.file_inventory(str(tmp_path))
  assert inventory == {
      'a.bin': {'sha256': hashlib.sha256(b'abc').hexdigest(), 'bytes': 3},
      'variables/v.index': {'sha256': hashlib.sha256(b'12345').hexdigest(),
                            'bytes': 5}}


def test_manifest_is_json_with_versions_and_every_section():
  manifest = release.build_manifest(
      model_name='m', model_version='17', labels=['x', 'y'],
      files={'f': {'sha256': '0', 'bytes': 1}}, metrics={'split': 'test'},
      inputs={'f': {'dtype': 'uint8'}}, parity={'formats': {}},
      lineage={'model_uri': '/u'},
      created=datetime.datetime(2026, 1, 2, 3, 4, 5,
                                tzinfo=datetime.timezone.utc))
  again = json.loads(json.dumps(manifest))
  assert again['created_utc'] == '2026-01-02T03:04:05Z'
  assert again['model_version'] == '17' and again['labels'] == ['x', 'y']
  versions = again['versions']
  for name in ('python', 'tensorflow', 'keras', 'tfx', 'tflite-support'):
    assert versions[name] and versions[name] != 'not installed', name
  assert set(again) >= {'files', 'inputs', 'metrics', 'parity', 'lineage'}


def test_publish_renames_a_complete_directory_into_place(tmp_path):
  base = str(tmp_path / 'serving')
  seen_during_fill = []

  def fill(staging):
    _fill({'saved_model.pb': b'pb', 'variables/x': b'v'})(staging)
    # While it is being written, the version does not exist under its name
    # and the staging name is hidden and not a number (TF Serving skips it).
    seen_during_fill.extend(os.listdir(base))
    assert not os.path.exists(os.path.join(base, '100'))

  path = release.publish_version(base, '100', fill)
  assert path == os.path.join(base, '100')
  assert sorted(os.listdir(path)) == ['saved_model.pb', 'variables']
  assert len(seen_during_fill) == 1
  assert seen_during_fill[0].startswith('.100.incomplete-')
  assert os.listdir(base) == ['100']


def test_a_failed_fill_leaves_nothing(tmp_path):
  base = str(tmp_path)

  def fill(staging):
    _fill({'saved_model.pb': b'pb'})(staging)
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError, match='disk full'):
    release.publish_version(base, '7', fill)
  assert os.listdir(base) == []


def test_an_existing_version_is_never_replaced(tmp_path):
  base = str(tmp_path)
  release.publish_version(base, '5', _fill({'a': b'first'}))
  with pytest.raises(FileExistsError):
    release.publish_version(base, '5', _fill({'a': b'second'}))
  with open(os.path.join(base, '5', 'a'), 'rb') as f:
    assert f.read() == b'first'
  with pytest.raises(ValueError, match='invalid version'):
    release.publish_version(base, '../x', _fill({}))


def test_a_reader_polling_during_publication_sees_no_partial_version(
    tmp_path):
  """A reader polls the base while the version is filled file by file (and
  after it is published): it must see no version directory while the fill
  runs, then the whole one, never part of it."""
  base = str(tmp_path)
  files = {f'variables/shard-{i}': os.urandom(1 << 16) for i in range(40)}
  files['saved_model.pb'] = b'pb'
  filling, published, done = (threading.Event(), threading.Event(),
                              threading.Event())
  seen = {'during': [], 'after': []}

  def reader():
    while not done.is_set():
      phase = 'after' if published.is_set() else 'during'
      if not filling.is_set():
        continue
      version = os.path.join(base, '9')
      seen[phase].append(len(os.listdir(os.path.join(version, 'variables')))
                         if os.path.isdir(version) else None)

  def slow_fill(staging):
    filling.set()
    for name, content in files.items():
      _fill({name: content})(staging)
      time.sleep(0.002)  # The reader polls between files.

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    release.publish_version(base, '9', slow_fill)
    published.set()
    deadline = time.time() + 10
    while not seen['after'] and time.time() < deadline:
      time.sleep(0.01)
  finally:
    done.set()
    thread.join()
  # Polled while the fill ran, and the version was not there yet; polls
  # between the publishing rename and publish_version returning may see it,
  # whole.  Never a part of it, never gone again.
  during = seen['during']
  assert during and during[0] is None, during[:5]
  assert set(during) <= {None, 40}, set(during)
  first_whole = during.index(40) if 40 in during else len(during)
  assert all(n == 40 for n in during[first_whole:])
  assert seen['after'] and set(seen['after']) == {40}, set(seen['after'])
