"""The model registry end to end on tiny data, weights, augmentation, losses.

Every registry model builds, trains a few steps through the Trainer's own
run_fn (weights=none, small images), exports both serving signatures, and
converts to TFLite (mixed_input: with the encoded metadata vector).
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from mobile_export import tflite
from models import augmentation
from models import explain
from models import features
from models import losses
from models import metadata_vector
from models import preprocessing
from models import registry
from models import trainer
from pipeline import configs
from tests.conftest import PROJECT_ROOT
from tests.conftest import train_tiny

SHARED_WEIGHTS = os.path.join(os.path.dirname(PROJECT_ROOT), 'shared',
                              'weights')
MOBILENET_035 = os.path.join(
    SHARED_WEIGHTS,
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5')

# (model, image size, extra settings): the smallest size each backbone takes.
# The large keras.applications backbones train eagerly here: tracing their
# training graph costs minutes on 2 cores and tests Keras, not this project
# (cnn_baseline and mixed_input train in graph mode here, mobilenet_v2 in
# test_pretrained_backbone_from_a_path_trains_in_two_phases).
EAGER = {'run_eagerly': True}
MODELS = [
    ('cnn_baseline', 32, {'width': 0.25}),
    ('mobilenet_v2', 32, {'alpha': 0.35, **EAGER}),
    ('efficientnet_b0', 32, EAGER),
    ('efficientnet_b1', 32, EAGER),
    ('efficientnet_b2', 32, EAGER),
    ('efficientnet_b3', 32, EAGER),
    ('efficientnet_b4', 32, EAGER),
    ('efficientnet_lite0', 32, EAGER),
    ('inception_v3', 75, EAGER),
    ('resnet50', 32, EAGER),
    ('mixed_input', 32, {'backbone': 'mobilenet_v2', 'alpha': 0.35}),
    ('mixed_input', 32, {'backbone': 'efficientnet_lite0', **EAGER}),
]
# EfficientNet-B1..B4 are B0 with other width / depth coefficients (same
# Keras code, same project code); InceptionV3 and ResNet50 go through the
# same registry path as MobileNetV2 and EfficientNet-B0 (a keras.applications
# backbone, its preprocessing, the feature_map layer, the shared head).
# Their end-to-end cases are opt-in (`pytest -m zoo`, about 6.5 more minutes
# on 2 cores: InceptionV3 ~90 s, ResNet50 ~70 s, B1-B4 ~4 min) to keep
# `make test` inside CI's budget; every model is still built and checked for
# the feature_map contract in every run.
ZOO_ONLY = {'efficientnet_b1', 'efficientnet_b2', 'efficientnet_b3',
            'efficientnet_b4', 'inception_v3', 'resnet50'}
END_TO_END = [pytest.param(*m, marks=[pytest.mark.zoo] if m[0] in ZOO_ONLY
                           else [],
                           id=m[0] if m[2].get('backbone', 'mobilenet_v2') ==
                           'mobilenet_v2' else f'{m[0]}-{m[2]["backbone"]}')
              for m in MODELS]


@pytest.fixture(scope='module')
def shared_weights(tmp_path_factory):
  """A no-top MobileNetV2 0.35 .h5 in Keras' own file name and format: the
  offline ImageNet copy in ../shared/weights, or where that is absent random
  weights saved the same way (these tests check loading from a path or the
  Keras cache and two-phase training, not ImageNet features)."""
  if os.path.exists(MOBILENET_035):
    return MOBILENET_035
  import h5py  # pylint: disable=g-import-not-at-top
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('weights') / os.path.basename(MOBILENET_035)
  model = keras.applications.MobileNetV2(include_top=False, weights=None,
                                         alpha=0.35, input_shape=(224, 224, 3))
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return str(path)


def _eval_examples(tiny_tfrecords, n=4):
  return [r.numpy() for r in
          preprocessing.read_examples([tiny_tfrecords[1]]).take(n)]


def _image_inputs(serialized, image_size, with_metadata):
  spec = {**preprocessing.image_spec(), **preprocessing.metadata_spec()}
  parsed = tf.io.parse_example(tf.constant(serialized), spec)
  inputs = {'images': preprocessing.decode_batch(parsed[features.IMAGE_KEY],
                                                 image_size)}
  if with_metadata:
    inputs.update({k: parsed[k] for k in registry.METADATA_KEYS})
  return inputs


@pytest.mark.parametrize('name,size,extra', END_TO_END)
def test_model_trains_exports_and_converts(name, size, extra, tiny_tfrecords,
                                           tmp_path):
  fn_args, history = train_tiny(tiny_tfrecords, tmp_path, model=name,
                            image_size=size, **extra)
  assert len(history['history']['loss']) == 1  # weights=none: one phase
  assert [p['phase'] for p in history['phases']] == ['train']
  assert name in history['model_summary']

  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  with_metadata = registry.uses_metadata(name)
  # Grad-CAM's signature is left out for a model with metadata inputs.
  assert set(loaded.signatures) == {features.EXAMPLE_SIGNATURE,
                                    features.IMAGE_SIGNATURE} | (
                                        {features.METADATA_VECTOR_SIGNATURE,
                                         features.IMAGE_ONLY_SIGNATURE}
                                        if with_metadata else
                                        {explain.GRADCAM_SIGNATURE})
  serialized = _eval_examples(tiny_tfrecords)
  by_example = loaded.signatures[features.EXAMPLE_SIGNATURE](
      examples=tf.constant(serialized))[features.PREDICTION_KEY].numpy()
  by_image = loaded.signatures[features.IMAGE_SIGNATURE](
      **_image_inputs(serialized, size, with_metadata))[
          features.PREDICTION_KEY].numpy()
  assert by_example.shape == (4, len(configs.LABELS))
  np.testing.assert_allclose(by_example.sum(axis=1), 1.0, atol=1e-4)
  # Both signatures apply the same preprocessing (inside the model).
  np.testing.assert_allclose(by_example, by_image, atol=1e-5)

  if with_metadata:
    # The .tflite takes the image and the encoded metadata vector.
    parsed = tf.io.parse_example(tf.constant(serialized),
                                 preprocessing.metadata_spec())
    vectors = metadata_vector.encode_batch(
        *(parsed[k].numpy() for k in registry.METADATA_KEYS))
    buffer = tflite.convert(fn_args.serving_model_dir, tflite.FLOAT16)
    images = _image_inputs(serialized, size, True)['images'].numpy()
    lite = tflite.predict(buffer, (images * 255).round().astype(np.uint8),
                          vectors)
    np.testing.assert_allclose(lite, by_image, atol=2e-2)
    return
  gradcam = loaded.signatures[explain.GRADCAM_SIGNATURE](
      **_image_inputs(serialized, size, False))
  np.testing.assert_allclose(gradcam[features.PREDICTION_KEY].numpy(),
                             by_image, atol=1e-5)
  heatmap = gradcam[explain.HEATMAP_KEY].numpy()
  assert heatmap.shape[0] == 4 and heatmap.min() >= 0 and heatmap.max() <= 1
  buffer = tflite.convert(fn_args.serving_model_dir, tflite.FLOAT16)
  images = _image_inputs(serialized, size, False)['images'].numpy()
  lite = tflite.predict(buffer, (images * 255).round().astype(np.uint8))
  np.testing.assert_allclose(lite, by_image, atol=2e-2)


def test_every_model_has_the_grad_cam_feature_map():
  for name, size, extra in MODELS:
    model = registry.build(name, num_classes=7, image_size=size,
                           weights='none', **{k: v for k, v in extra.items()
                                              if k != 'run_eagerly'})
    feature_map = model.get_layer(registry.FEATURE_MAP).output
    assert len(feature_map.shape) == 4, name  # [N, h, w, channels]
    if name == 'cnn_baseline':
      # Before the last block's max-pooling and dropout (twice the
      # resolution; test_explain checks its Grad-CAM).
      pool = model.get_layer('block3_pool')
      assert pool.input is feature_map
    else:
      # The backbone's map feeds the global pooling that feeds the head.
      assert model.get_layer('gap').input is feature_map, name
    assert model.get_layer(registry.OUTPUT_LAYER).dtype_policy.name == \
        'float32'


def test_pretrained_backbone_from_a_path_trains_in_two_phases(
    shared_weights, tiny_tfrecords, tmp_path):
  reference = keras.applications.MobileNetV2(
      include_top=False, weights=shared_weights, alpha=0.35,
      input_shape=(96, 96, 3))
  model = registry.build('mobilenet_v2', num_classes=7, image_size=96,
                         weights=shared_weights, alpha=0.35)
  backbone = model.get_layer(registry.BACKBONE_LAYER)
  for mine, theirs in zip(backbone.weights, reference.weights):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  assert registry.pretrained_backbone(model) is backbone

  _, history = train_tiny(tiny_tfrecords, tmp_path, model='mobilenet_v2',
                      image_size=96, alpha=0.35, weights=shared_weights,
                      fine_tune_layers=10)
  head, fine_tune = history['phases']
  assert (head['phase'], fine_tune['phase']) == ('head', 'fine_tune')
  assert fine_tune['first_epoch'] == 1 and len(history['history']['loss']) == 2
  assert head['trainable_weights'] == 2  # the softmax layer's kernel, bias
  assert head['trainable_weights'] < fine_tune['trainable_weights']
  assert fine_tune['learning_rate'] < head['learning_rate']


def test_fine_tuning_keeps_batch_norm_frozen(shared_weights):
  model = registry.build('mobilenet_v2', num_classes=7, image_size=96,
                         weights=shared_weights, alpha=0.35)
  registry.set_trainable(model, 0)
  assert model.get_layer(registry.OUTPUT_LAYER).trainable
  assert not model.get_layer(registry.BACKBONE_LAYER).trainable_weights
  registry.set_trainable(model, 20)
  backbone = model.get_layer(registry.BACKBONE_LAYER)
  trainable = [l for l in backbone.layers if l.trainable_weights]
  assert trainable and all(
      not isinstance(l, keras.layers.BatchNormalization) for l in trainable)
  assert all(l in backbone.layers[-20:] for l in trainable)


def _keras_home(monkeypatch, path):
  # Keras reads $KERAS_HOME once, at import; this is where it keeps it.
  from keras.src.backend import config  # pylint: disable=g-import-not-at-top
  path.mkdir(parents=True, exist_ok=True)
  monkeypatch.setattr(config, '_KERAS_DIR', str(path))
  assert registry.keras_cache_dirs() == (str(path / 'models'),)


def test_imagenet_weights_never_download(tmp_path, monkeypatch):
  _keras_home(monkeypatch, tmp_path / 'keras')
  with pytest.raises(registry.ImageNetWeightsUnavailable,
                     match=r'never downloads.*path of a no-top \.h5'):
    registry.build('efficientnet_b0', num_classes=7, image_size=64,
                   weights='imagenet')
  assert not (tmp_path / 'keras' / 'models').exists()  # nothing fetched
  with pytest.raises(FileNotFoundError, match='does not exist'):
    registry.build('mobilenet_v2', num_classes=7, image_size=64,
                   weights=str(tmp_path / 'missing.h5'), alpha=0.35)


def test_imagenet_weights_come_from_keras_cache(shared_weights, tmp_path,
                                                monkeypatch):
  cache = tmp_path / 'keras' / 'models'
  cache.mkdir(parents=True)
  shutil.copy(shared_weights, cache)  # Keras' own file name, size 224.
  _keras_home(monkeypatch, tmp_path / 'keras')
  model = registry.build('mobilenet_v2', num_classes=7, image_size=224,
                         weights='imagenet', alpha=0.35)
  reference = keras.applications.MobileNetV2(
      include_top=False, weights=shared_weights, alpha=0.35,
      input_shape=(224, 224, 3))
  np.testing.assert_array_equal(
      model.get_layer(registry.BACKBONE_LAYER).weights[0].numpy(),
      reference.weights[0].numpy())
  # At 128 px Keras would look for the 128 file: refused, not downloaded.
  with pytest.raises(registry.ImageNetWeightsUnavailable, match='_128_'):
    registry.build('mobilenet_v2', num_classes=7, image_size=128,
                   weights='imagenet', alpha=0.35)


def test_augmentation_is_active_in_training_only():
  layers = augmentation.layers(flip='horizontal_and_vertical', rotation=30,
                               zoom=0.2, brightness=0.2, contrast=0.3,
                               translation=0.1, seed=3)
  assert [l.name for l in layers] == [
      'augment_flip', 'augment_rotation', 'augment_translation',
      'augment_zoom', 'augment_brightness', 'augment_contrast']
  images = np.random.default_rng(0).random((4, 32, 32, 3)).astype('float32')
  x_train, x_infer = images, images
  for layer in layers:
    x_train = layer(x_train, training=True)
    x_infer = layer(x_infer, training=False)
  np.testing.assert_array_equal(np.asarray(x_infer), images)
  assert np.abs(np.asarray(x_train) - images).mean() > 0.01
  model = registry.build('cnn_baseline', num_classes=7, image_size=32,
                         width=0.25, augment=augmentation.from_config(
                             {'augment_rotation': 30, 'augment_zoom': 0.2}))
  np.testing.assert_array_equal(model(images, training=False),
                                model(images, training=False))


def test_focal_loss():
  y = np.array([0, 1, 2])
  p = np.array([[0.9, 0.05, 0.05], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]],
               'float32')
  ce = keras.losses.SparseCategoricalCrossentropy(reduction=None)(y, p)
  np.testing.assert_allclose(
      losses.SparseCategoricalFocalLoss(gamma=0.0, reduction=None)(y, p),
      ce, rtol=1e-5)
  focal = np.asarray(losses.SparseCategoricalFocalLoss(
      gamma=2.0, reduction=None)(y, p))
  p_true = np.array([0.9, 0.4, 0.8])
  np.testing.assert_allclose(focal, -(1 - p_true) ** 2 * np.log(p_true),
                             rtol=1e-5)
  # The confident example loses most of its weight, the hard one least.
  ratio = focal / np.asarray(ce)
  assert ratio[0] < ratio[2] < ratio[1]


def test_balanced_sampling_draws_every_class_equally(tiny_tfrecords):
  counts = preprocessing.label_counts([tiny_tfrecords[0]], 7)
  assert max(counts) >= 3 * min(counts)  # the tiny archive is imbalanced
  def labels(seed):
    ds = trainer.make_dataset([tiny_tfrecords[0]], 16, 32, training=True,
                              seed=seed, balanced_classes=7)
    return np.concatenate([y.numpy() for _, y in ds.take(20)])
  drawn = labels(5)
  share = np.bincount(drawn, minlength=7) / len(drawn)
  assert np.all(np.abs(share - 1 / 7) < 0.05), share
  np.testing.assert_array_equal(drawn, labels(5))  # deterministic by seed
  assert not np.array_equal(drawn, labels(6))


def test_mixed_input_uses_metadata_with_a_missing_age_indicator():
  model = registry.build('mixed_input', num_classes=7, image_size=32,
                         backbone='cnn_baseline', width=0.25)
  age = model.get_layer('age_features')(np.array([[50.0], [np.nan]],
                                                 'float32'))
  np.testing.assert_allclose(age, [[0.5, 0.0], [0.0, 1.0]])
  sex = model.get_layer('sex_one_hot')(tf.constant([['female'], ['unknown'],
                                                    ['x']]))
  assert np.asarray(sex).argmax(axis=1).tolist() == [1, 0, 0]  # 0: other
  # Random head weights: different metadata, different probabilities.
  image = np.full((1, 32, 32, 3), 0.5, 'float32')
  def predict(age, sex, site):
    return np.asarray(model({'image': tf.constant(image),
                             'age': tf.constant([[age]], tf.float32),
                             'sex': tf.constant([[sex]]),
                             'localization': tf.constant([[site]])}))
  assert not np.allclose(predict(30.0, 'male', 'back'),
                         predict(np.nan, 'female', 'face'))


def test_metadata_dropout_hides_a_share_of_the_metadata_in_training_only():
  layer = registry.MetadataDropout(0.3, seed=7)
  rng = np.random.default_rng(0)
  vectors = metadata_vector.encode_batch(
      rng.uniform(1, 90, 4000), rng.choice(['male', 'female'], 4000),
      rng.choice(list(metadata_vector.LOCALIZATION_VOCABULARY), 4000))
  out = np.asarray(layer(vectors, training=True))
  hidden = np.all(out == metadata_vector.MISSING, axis=1)
  # Every row is either hidden whole or kept as it was (no row of this
  # sample encodes to MISSING: every age is given).
  np.testing.assert_array_equal(out[~hidden], vectors[~hidden])
  assert abs(hidden.mean() - 0.3) < 0.03, hidden.mean()
  np.testing.assert_array_equal(layer(vectors, training=False), vectors)
  assert registry.MetadataDropout.from_config(layer.get_config()).rate == 0.3


def test_mixed_input_with_metadata_dropout_answers_as_without_at_inference():
  def build(rate):
    keras.utils.set_random_seed(3)
    return registry.build('mixed_input', num_classes=7, image_size=32,
                          backbone='cnn_baseline', width=0.25,
                          metadata_dropout=rate, seed=1)
  plain, dropping = build(0.0), build(0.5)
  names = {layer.name for layer in dropping.layers}
  assert 'metadata_dropout' in names
  assert 'metadata_dropout' not in {layer.name for layer in plain.layers}
  inputs = {'image': tf.random.uniform((4, 32, 32, 3), seed=2),
            'age': tf.constant([[30.0], [np.nan], [70.0], [5.0]]),
            'sex': tf.constant([['male'], ['female'], ['unknown'], ['x']]),
            'localization': tf.constant([['back'], ['face'], ['trunk'],
                                         ['scalp']])}
  np.testing.assert_allclose(dropping(inputs, training=False),
                             plain(inputs, training=False), atol=1e-6)
  # The numeric model (the .tflite files' source) holds the layer too.
  vector_model = registry.metadata_vector_model(dropping)
  assert 'metadata_dropout' in {layer.name for layer in vector_model.layers}
  with pytest.raises(ValueError, match='metadata_dropout'):
    configs.Settings(metadata_dropout=1.0)
  assert configs.Settings(metadata_dropout=0.25).trainer_config()[
      'metadata_dropout'] == 0.25


def test_mixed_precision_keeps_a_float32_output():
  cfg = configs.Settings(model='mobilenet_v2', weights='none',
                         alpha=0.35).trainer_config()
  assert trainer.precision_policy(True) == (
      'float32' if not tf.config.list_physical_devices('GPU') else
      trainer.precision_policy(True))
  model = trainer.build_model({**cfg, 'image_size': 32}, 7, False,
                              'mixed_bfloat16')
  assert keras.mixed_precision.global_policy().name == 'float32'  # restored
  assert model.get_layer('head_dropout').compute_dtype == 'bfloat16'
  out = model(np.zeros((2, 32, 32, 3), 'float32'))
  assert out.dtype == 'float32'


def test_tuner_finds_hyperparameters_the_trainer_applies(tiny_tfrecords,
                                                         tmp_path):
  from models import tuner  # pylint: disable=g-import-not-at-top
  cfg = configs.Settings(model='cnn_baseline', image_size=16, width=0.25,
                         batch_size=16, steps_per_epoch=1, tuner_trials=2,
                         tuner_epochs=1).trainer_config()
  result = tuner.tuner_fn(FnArgs(
      train_files=[tiny_tfrecords[0]], eval_files=[tiny_tfrecords[1]],
      working_dir=str(tmp_path / 'tuner'), custom_config=cfg))
  result.tuner.search(**result.fit_kwargs)
  best = result.tuner.get_best_hyperparameters(1)[0]
  assert len(result.tuner.oracle.trials) == 2
  applied = trainer.apply_hyperparameters(cfg, best.get_config())
  assert applied['learning_rate'] == best.values['learning_rate']
  assert applied['dropout'] == best.values['dropout']
  assert applied['fine_tune_layers'] == best.values['fine_tune_layers']
  assert applied['model'] == 'cnn_baseline'
  assert trainer.apply_hyperparameters(cfg, None) == cfg
