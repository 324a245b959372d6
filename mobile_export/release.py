"""A pushed model version: its manifest and its atomic publication.

A version directory ``<base>/<version>/`` holds the SavedModel files (at the
top, as TF Serving expects), the .tflite files that passed the parity gate,
``labels.txt`` and ``manifest.json`` (versions, sha256 and size of every
other file, metrics, input specs, parity results).

It is filled under a temporary name in the same parent directory
(``.<version>.incomplete-<random>``: hidden and not a number, so TF Serving
and version scanners ignore it) and renamed into place in one step: on a
local or POSIX filesystem a reader sees either no version or a complete one.
(Object stores such as GCS have no atomic directory rename; there the rename
is a copy and readers should wait for ``manifest.json``.)
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import uuid
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import tensorflow as tf

MANIFEST_FILE = 'manifest.json'
MANIFEST_FORMAT_VERSION = 1

# Distributions whose versions identify how a version was built.
_DISTRIBUTIONS = ('skin-lesion-tfx', 'tensorflow', 'keras', 'tfx',
                  'tflite-support', 'tensorflow-model-analysis')


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    while True:
      chunk = f.read(1 << 20)
      if not chunk:
        break
      digest.update(chunk)
  return digest.hexdigest()


def file_inventory(root: str, exclude: Sequence[str] = (MANIFEST_FILE,)
                   ) -> Dict[str, Dict[str, Any]]:
  """{relative path ('/'-separated): {'sha256', 'bytes'}} of every file."""
  inventory = {}
  for directory, _, files in tf.io.gfile.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      relative = os.path.relpath(path, root).replace(os.sep, '/')
      if relative in exclude:
        continue
      inventory[relative] = {'sha256': sha256_file(path),
                             'bytes': tf.io.gfile.stat(path).length}
  return dict(sorted(inventory.items()))


def software_versions() -> Dict[str, str]:
  versions = {'python': platform.python_version()}
  for name in _DISTRIBUTIONS:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = 'not installed'
  return versions


def build_manifest(*, model_name: str, model_version: str,
                   labels: Sequence[str], files: Mapping[str, Any],
                   metrics: Mapping[str, Any], inputs: Mapping[str, Any],
                   parity: Mapping[str, Any],
                   lineage: Optional[Mapping[str, Any]] = None,
                   versions: Optional[Mapping[str, str]] = None,
                   created: Optional[datetime.datetime] = None
                   ) -> Dict[str, Any]:
  """The manifest of one version directory (JSON-serialisable).

  Args:
    model_name: the model's name (as in the TFLite metadata).
    model_version: the version (the directory name; the TFLite metadata's
      version).
    labels: the class names, in output order.
    files: ``file_inventory`` of the directory.
    metrics: test-split metrics of the SavedModel and each .tflite.
    inputs: per served file, what it must be fed.
    parity: thresholds and per-format results, including the formats that
      failed and were left out.
    lineage: where the version came from (artifact URIs and ids).
    versions: software versions (default: ``software_versions()``).
    created: creation time (default: now, UTC).
  """
  created = created or datetime.datetime.now(datetime.timezone.utc)
  return {
      'manifest_format_version': MANIFEST_FORMAT_VERSION,
      'model_name': model_name,
      'model_version': model_version,
      'created_utc': created.strftime('%Y-%m-%dT%H:%M:%SZ'),
      'versions': dict(versions or software_versions()),
      'labels': list(labels),
      'files': dict(files),
      'inputs': dict(inputs),
      'metrics': dict(metrics),
      'parity': dict(parity),
      'lineage': dict(lineage or {}),
  }


def write_json(path: str, value: Any) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(value, indent=2, sort_keys=False) + '\n')


def read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path, 'r') as f:
    return json.load(f)


def latest_version(base_directory: str) -> Optional[str]:
  """The newest published version's name (versions are integers), or None.

  Hidden staging directories (``.<version>.incomplete-...``) and other
  non-numeric names are not versions.
  """
  if not tf.io.gfile.isdir(base_directory):
    return None
  versions = [name.rstrip('/') for name in tf.io.gfile.listdir(base_directory)]
  versions = [v for v in versions if v.isdigit() and tf.io.gfile.isdir(
      os.path.join(base_directory, v))]
  return max(versions, key=int) if versions else None


def publish_version(base_directory: str, version: str,
                    fill: Callable[[str], None]) -> str:
  """Creates ``<base_directory>/<version>`` in one rename.

  Args:
    base_directory: the parent of the version directories (created if
      missing).
    version: the new version's name.
    fill: called with an empty staging directory to write the version into.

  Returns:
    The version directory.

  Raises:
    FileExistsError: when the version exists already (nothing is written).
    Exception: whatever ``fill`` raises; the staging directory is removed.
  """
  if not version or '/' in version or version.startswith('.'):
    raise ValueError(f'invalid version name {version!r}')
  destination = os.path.join(base_directory, version)
  if tf.io.gfile.exists(destination):
    raise FileExistsError(f'version {destination} exists already')
  tf.io.gfile.makedirs(base_directory)
  staging = os.path.join(base_directory,
                         f'.{version}.incomplete-{uuid.uuid4().hex[:8]}')
  tf.io.gfile.makedirs(staging)
  try:
    fill(staging)
    # Local filesystems: rename(2), atomic; it fails rather than replace a
    # version that appeared meanwhile (a non-empty directory).
    tf.io.gfile.rename(staging, destination, overwrite=False)
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
    raise
  return destination
