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
                   blessing: Optional[Mapping[str, Any]] = None,
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
    blessing: the gates it passed, with their values, and its calibration.
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
      'blessing': dict(blessing or {}),
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


class VersionIntegrityError(ValueError):
  """A version directory does not match its manifest (tampered, truncated)."""


def verify_version(version_dir: str) -> Dict[str, Any]:
  """Checks every file of a version directory against its manifest.

  Each file the manifest lists must exist with its recorded size and sha256,
  and no other file may be there (besides the manifest itself).

  Returns:
    The manifest.

  Raises:
    VersionIntegrityError: naming the first file that is missing, has
      another size (truncated or grown), another sha256 (altered), or is not
      in the manifest; or when the manifest itself is missing or unreadable.
  """
  path = os.path.join(version_dir, MANIFEST_FILE)
  if not tf.io.gfile.exists(path):
    raise VersionIntegrityError(f'{version_dir}: no {MANIFEST_FILE}; not a '
                                'pushed version directory')
  try:
    manifest = read_json(path)
    expected = dict(manifest['files'])
  except (ValueError, KeyError, TypeError) as e:
    raise VersionIntegrityError(f'{path}: unreadable manifest ({e})') from None
  for relative, record in sorted(expected.items()):
    file_path = os.path.join(version_dir, *relative.split('/'))
    if not tf.io.gfile.exists(file_path):
      raise VersionIntegrityError(f'{file_path}: missing (listed in the '
                                  'manifest)')
    size = tf.io.gfile.stat(file_path).length
    if size != record['bytes']:
      raise VersionIntegrityError(
          f'{file_path}: {size} bytes, the manifest records '
          f'{record["bytes"]} (truncated or altered)')
    digest = sha256_file(file_path)
    if digest != record['sha256']:
      raise VersionIntegrityError(
          f'{file_path}: sha256 {digest} differs from the manifest\'s '
          f'{record["sha256"]} (altered)')
  for directory, _, files in tf.io.gfile.walk(version_dir):
    for name in files:
      relative = os.path.relpath(os.path.join(directory, name),
                                 version_dir).replace(os.sep, '/')
      if relative != MANIFEST_FILE and relative not in expected:
        raise VersionIntegrityError(
            f'{os.path.join(version_dir, relative)}: not in the manifest '
            '(added after the push)')
  return manifest


def latest_version_dir(base_directory: str) -> str:
  """The newest complete version under a serving base directory.

  Versions are directories named by a number (MobilePusher writes the
  export time in seconds); staging directories (hidden) are ignored.
  """
  versions = [name.rstrip('/') for name in tf.io.gfile.listdir(base_directory)
              if name.rstrip('/').isdigit()
              and tf.io.gfile.isdir(os.path.join(base_directory,
                                                 name.rstrip('/')))]
  if not versions:
    raise FileNotFoundError(f'{base_directory}: no version directory (a '
                            'number) here')
  return os.path.join(base_directory, max(versions, key=int))


def resolve_version_dir(path: str) -> str:
  """A version directory itself, or the latest version of a base directory."""
  if (tf.io.gfile.exists(os.path.join(path, MANIFEST_FILE))
      or os.path.basename(os.path.normpath(path)).isdigit()):
    return path  # A version (verify_version refuses one without manifest).
  return latest_version_dir(path)
