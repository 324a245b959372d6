"""The recipe for balanced accuracy: each ingredient on its own, then end to
end through run_fn (logit adjustment, label smoothing, the cosine schedule,
test-time augmentation, Shades of Gray colour constancy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mobile_export import tflite
from models import color
from models import export
from models import features
from models import losses
from models import preprocessing
from models import registry
from models import trainer
from models import tta
from pipeline import configs
from tests.conftest import train_tiny


def _log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _random_problem(seed=0, n=16, k=5):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, k)).astype('float32') * 2
  probs = np.exp(_log_softmax(logits)).astype('float32')
  labels = rng.integers(0, k, size=n)
  prior = rng.dirichlet(np.ones(k)).astype('float32')
  return logits, probs, labels, prior


def _per_example(loss, labels, probs):
  return np.asarray(loss(labels, probs, sample_weight=None))


def test_logit_adjustment_is_the_cross_entropy_of_the_shifted_logits():
  logits, probs, labels, prior = _random_problem()
  for tau in (0.5, 1.0, 2.0):
    loss = losses.SparseCategoricalAdjustedCrossentropy(
        class_prior=prior, tau=tau, reduction=None)
    expected = -_log_softmax(logits + tau * np.log(prior))[
        np.arange(len(labels)), labels]
    np.testing.assert_allclose(_per_example(loss, labels, probs), expected,
                               rtol=1e-4, atol=1e-5)
  # tau = 0 is Keras' sparse cross-entropy.
  plain = losses.SparseCategoricalAdjustedCrossentropy(
      class_prior=prior, tau=0.0, reduction=None)
  np.testing.assert_allclose(
      _per_example(plain, labels, probs),
      keras.losses.SparseCategoricalCrossentropy(reduction=None)(labels, probs),
      rtol=1e-5)


def test_logit_adjustment_favours_rare_classes_at_its_optimum():
  # One input, labels at the prior: plain cross-entropy's optimum is
  # softmax = prior; the adjusted loss's (tau = 1) is the uniform softmax,
  # i.e. the rare class is predicted as often as the common one.
  prior = np.array([0.8, 0.2], 'float32')
  labels = np.array([0] * 8 + [1] * 2)
  logits = tf.Variable(np.zeros((1, 2), 'float32'))
  loss = losses.SparseCategoricalAdjustedCrossentropy(class_prior=prior,
                                                      tau=1.0)
  optimizer = keras.optimizers.SGD(1.0)
  for _ in range(300):
    with tf.GradientTape() as tape:
      probs = tf.repeat(tf.nn.softmax(logits), len(labels), axis=0)
      value = loss(labels, probs)
    optimizer.apply_gradients([(tape.gradient(value, logits), logits)])
  np.testing.assert_allclose(tf.nn.softmax(logits).numpy()[0], [0.5, 0.5],
                             atol=1e-2)


def test_label_smoothing_is_the_hand_formula():
  _, probs, labels, _ = _random_problem(seed=1)
  eps = 0.1
  loss = losses.SparseCategoricalAdjustedCrossentropy(label_smoothing=eps,
                                                      reduction=None)
  log_p = np.log(probs)
  ce = -log_p[np.arange(len(labels)), labels]
  np.testing.assert_allclose(_per_example(loss, labels, probs),
                             (1 - eps) * ce + eps * (-log_p).mean(axis=-1),
                             rtol=1e-4)
  # With the focal weight: each class's term weighted by (1 - p_k)^gamma.
  focal = losses.SparseCategoricalFocalLoss(gamma=2.0, label_smoothing=eps,
                                            reduction=None)
  targets = np.full(probs.shape, eps / probs.shape[1])
  targets[np.arange(len(labels)), labels] += 1 - eps
  np.testing.assert_allclose(
      _per_example(focal, labels, probs),
      -(targets * (1 - probs) ** 2 * log_p).sum(axis=-1), rtol=1e-4)


def test_make_loss_reads_the_recipe_settings():
  def make(**settings):
    return trainer.make_loss(configs.Settings(**settings).trainer_config(),
                             class_counts=[30, 10])
  assert make(imbalance='none') == 'sparse_categorical_crossentropy'
  adjusted = make(imbalance='none', logit_adjustment_tau=1.0,
                  label_smoothing=0.1)
  assert adjusted.tau == 1.0 and adjusted.label_smoothing == 0.1
  np.testing.assert_allclose(adjusted.class_prior, [0.75, 0.25])
  focal = make(imbalance='focal_loss', label_smoothing=0.2)
  assert isinstance(focal, losses.SparseCategoricalFocalLoss)
  assert focal.gamma == 2.0 and focal.label_smoothing == 0.2
  # Configs not built by Settings are refused as Settings refuses them.
  with pytest.raises(ValueError, match="imbalance 'none'"):
    trainer.make_loss({'imbalance': 'class_weights',
                       'logit_adjustment_tau': 1.0}, [3, 1])
  with pytest.raises(ValueError, match='class_counts'):
    trainer.make_loss({'imbalance': 'none', 'logit_adjustment_tau': 1.0})


def test_cosine_schedule_warms_up_then_decays_to_zero():
  cfg = {'lr_schedule': 'cosine', 'warmup_epochs': 2}
  schedule = trainer.learning_rate_schedule(cfg, 1e-3, epochs=10,
                                            steps_per_epoch=5)
  values = np.array([float(schedule(step)) for step in range(51)])
  assert values[0] == 0.0  # warm-up start
  np.testing.assert_allclose(values[5], 0.5e-3, rtol=1e-5)  # linear
  np.testing.assert_allclose(values[10], 1e-3, rtol=1e-6)  # end of warm-up
  assert values[50] < 1e-9  # the phase's last step
  assert np.all(np.diff(values[:11]) > 0)
  assert np.all(np.diff(values[10:]) < 0)  # monotone after warm-up
  no_warmup = trainer.learning_rate_schedule(
      {'lr_schedule': 'cosine'}, 1e-3, epochs=2, steps_per_epoch=5)
  np.testing.assert_allclose(float(no_warmup(0)), 1e-3)
  np.testing.assert_allclose(float(no_warmup(5)), 0.5e-3, rtol=1e-5)
  assert trainer.learning_rate_schedule({}, 1e-3, 2, 5) == 1e-3
  with pytest.raises(ValueError, match='lr_schedule'):
    trainer.learning_rate_schedule({'lr_schedule': 'step'}, 1e-3, 2, 5)


def test_cosine_phases_compile_a_schedule_and_drop_the_plateau_callback(
    tiny_tfrecords):
  cfg = configs.Settings(image_size=16, width=0.25, batch_size=8, epochs=2,
                         lr_schedule='cosine', warmup_epochs=0.5,
                         imbalance='none').trainer_config()
  assert trainer.plateau_callbacks(cfg) == []
  assert len(trainer.plateau_callbacks({**cfg, 'lr_schedule': 'constant'}
                                       )) == 1
  counts = [10] * 7  # 70 images, batches of 8: 9 steps per epoch
  model = trainer.build_model(cfg, 7, False, 'float32')
  ds = trainer.make_dataset([tiny_tfrecords[0]], 16, 8, training=True,
                            seed=1, cache=False).take(2)
  _, phases = trainer.fit_phases(model, cfg, 7, ds, ds,
                                 tf.distribute.get_strategy(), list,
                                 class_counts=counts, verbose=0)
  schedule = model.optimizer._learning_rate  # pylint: disable=protected-access
  assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
  assert schedule.warmup_steps == 4 and schedule.decay_steps == 18 - 4
  assert schedule.warmup_target == cfg['learning_rate']
  assert phases[0]['lr_schedule'] == 'cosine'


class _WeightsAtValidation(keras.callbacks.Callback):
  """The model's trainable weights and the optimizer's moving averages as
  validation starts, each epoch."""

  def __init__(self):
    super().__init__()
    self.seen = []

  def on_test_begin(self, logs=None):
    optimizer = self.model.optimizer
    self.seen.append((
        [np.array(w) for w in self.model.trainable_weights],
        [np.array(a) for a in optimizer._model_variables_moving_average  # pylint: disable=protected-access
         if a is not None]))


def test_weight_averaging_is_what_validation_and_the_model_get(
    tiny_tfrecords):
  cfg = configs.Settings(image_size=16, width=0.25, batch_size=8, epochs=3,
                         ema_momentum=0.9, imbalance='none',
                         early_stopping_patience=10).trainer_config()
  model = trainer.build_model(cfg, 7, False, 'float32')
  batches = trainer.make_dataset([tiny_tfrecords[0]], 16, 8, training=True,
                                 seed=1, cache=False).take(2)
  at_validation = _WeightsAtValidation()
  trainer.fit_phases(model, cfg, 7, batches.repeat(), batches,
                     tf.distribute.get_strategy(), lambda: [at_validation],
                     steps_per_epoch=2, verbose=0)
  optimizer = model.optimizer
  assert optimizer.use_ema and optimizer.ema_momentum == 0.9
  assert optimizer.ema_overwrite_frequency == 2  # the end of each epoch
  assert len(at_validation.seen) == 3
  for weights, averages in at_validation.seen:
    assert len(weights) == len(averages)
    for w, a in zip(weights, averages):
      np.testing.assert_array_equal(w, a)
  # Training moved the weights between the epochs' averages.
  assert any(not np.array_equal(a, b) for a, b in zip(
      at_validation.seen[0][0], at_validation.seen[-1][0]))
  final = [np.array(a) for a in optimizer._model_variables_moving_average  # pylint: disable=protected-access
           if a is not None]
  for w, a in zip(model.trainable_weights, final):
    np.testing.assert_array_equal(np.array(w), a)


def test_weight_averaging_is_off_by_default_and_checked():
  off = trainer.make_optimizer(configs.Settings().trainer_config(), 1e-3, 5)
  assert not off.use_ema
  no_steps = trainer.make_optimizer({'ema_momentum': 0.99}, 1e-3)
  assert no_steps.use_ema and no_steps.ema_overwrite_frequency is None
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match='ema_momentum'):
      configs.Settings(ema_momentum=bad)


def _neutral_texture(seed=0, size=24):
  gray = np.random.default_rng(seed).uniform(0.2, 0.7, (1, size, size, 1))
  return np.repeat(gray, 3, axis=-1).astype('float32')


def _illuminants(images, p=6.0):
  return (np.mean(images ** p, axis=(1, 2))) ** (1 / p)


def test_shades_of_gray_neutralises_a_colour_cast():
  layer = color.ShadesOfGray()
  cast = _neutral_texture() * np.array([1.2, 1.0, 0.7], 'float32')
  assert np.ptp(_illuminants(cast)) > 0.1
  out = np.asarray(layer(cast))
  e = _illuminants(out)
  np.testing.assert_allclose(e, e.mean(), rtol=1e-3)
  # The cast's gray-world mean (brightness) is kept.
  np.testing.assert_allclose(e.mean(), _illuminants(cast).mean(), rtol=1e-3)
  neutral = _neutral_texture(1)
  np.testing.assert_allclose(np.asarray(layer(neutral)), neutral, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(layer(np.zeros_like(neutral))), 0)
  assert np.asarray(layer(np.ones_like(neutral) * [1.0, 0.5, 0.5])).max() <= 1


@pytest.mark.parametrize('name,extra', [
    ('cnn_baseline', {'width': 0.25}),
    ('mobilenet_v2', {'alpha': 0.35}),
    ('mixed_input', {'backbone': 'cnn_baseline', 'width': 0.25}),
])
def test_every_registry_path_applies_colour_constancy_first(name, extra):
  model = registry.build(name, num_classes=3, image_size=32,
                         color_constancy='shades_of_gray', **extra)
  layer = model.get_layer(color.LAYER_NAME)
  assert isinstance(layer, color.ShadesOfGray)
  assert layer.input.name == model.get_layer('image').output.name
  plain = registry.build(name, num_classes=3, image_size=32, **extra)
  assert color.LAYER_NAME not in [l.name for l in plain.layers]


def test_recipe_settings_are_validated_at_construction():
  for bad, name in ((dict(tta='rot'), 'tta'),
                    (dict(lr_schedule='step'), 'lr_schedule'),
                    (dict(color_constancy='gray_world'), 'color_constancy'),
                    (dict(logit_adjustment_tau=-0.5, imbalance='none'),
                     'logit_adjustment_tau'),
                    (dict(label_smoothing=-0.1), 'label_smoothing'),
                    (dict(label_smoothing=1.0), 'label_smoothing'),
                    (dict(warmup_epochs=-1.0), 'warmup_epochs'),
                    (dict(logit_adjustment_tau=1.0), 'imbalance'),
                    (dict(logit_adjustment_tau=1.0,
                          imbalance='balanced_sampling'), 'imbalance')):
    with pytest.raises(ValueError, match=name):
      configs.Settings(**bad)
  settings = configs.Settings(logit_adjustment_tau=1.0, imbalance='none',
                              label_smoothing=0.1, lr_schedule='cosine',
                              warmup_epochs=0.5, tta='dihedral',
                              color_constancy='shades_of_gray')
  # Every recipe setting reaches the Trainer and survives the environment.
  cfg = settings.trainer_config()
  for key in ('logit_adjustment_tau', 'label_smoothing', 'lr_schedule',
              'warmup_epochs', 'tta', 'color_constancy'):
    assert cfg[key] == getattr(settings, key)
  assert configs.Settings.from_env(settings.to_env()) == settings
  # Off by default: today's training.
  default = configs.Settings().trainer_config()
  assert (default['logit_adjustment_tau'], default['label_smoothing'],
          default['lr_schedule'], default['tta'],
          default['color_constancy']) == (0.0, 0.0, 'constant', 'none', 'none')


def test_shades_of_gray_converts_to_tflite_and_agrees(tmp_path):
  model = _orientation_sensitive_model(color_constancy='shades_of_gray')
  export.export_serving_model(model, str(tmp_path), 8)
  buffer = tflite.convert(str(tmp_path), tflite.FLOAT16)
  pixels = np.round(_images(size=8) * [255, 200, 120]).astype(np.uint8)
  images = pixels.astype('float32') / 255
  want = np.asarray(model(images))
  # The layer matters here: without it the same weights answer otherwise.
  without = keras.Model(model.input, model.layers[-1](
      model.layers[-2](model.input)))
  assert np.abs(np.asarray(without(images)) - want).max() > 0.05
  np.testing.assert_allclose(tflite.predict(buffer, pixels), want, atol=5e-3)


def test_shades_of_gray_stays_float_in_the_int8_file(tmp_path):
  """Its x^6 and means do not fit 8 bits: the int8 file keeps the layer's
  ops float (DEFAULT_FLOAT_LAYERS) and is then closer to the SavedModel."""
  model = _orientation_sensitive_model(size=16,
                                       color_constancy='shades_of_gray')
  export.export_serving_model(model, str(tmp_path), 16)
  rng = np.random.default_rng(1)
  casts = rng.uniform(0.3, 1.0, size=(40, 1, 1, 3))
  images = np.round(_images(n=40, size=16, seed=2) * casts * 255) / 255
  pixels = np.round(images * 255).astype(np.uint8)
  want = np.asarray(model(images.astype('float32')))
  calibration = list(images[:20].astype('float32'))
  errors = {}
  for name, layers in (('float', tflite.DEFAULT_FLOAT_LAYERS),
                       ('int8', ())):
    buffer = tflite.convert_int8(str(tmp_path), calibration,
                                 float_layers=layers)
    interpreter = tf.lite.Interpreter(model_content=buffer)
    dtypes = {t['index']: t['dtype'] for t in
              interpreter.get_tensor_details()}
    kinds = {(op['op_name'], dtypes[op['inputs'][0]].__name__)
             for op in interpreter._get_ops_details()}  # pylint: disable=protected-access
    assert (('MEAN', 'float32') in kinds) == (name == 'float'), kinds
    errors[name] = np.abs(tflite.predict(buffer, pixels) - want).mean()
  assert errors['float'] < 0.7 * errors['int8'], errors


def _numpy_views(images, mode):
  if mode == 'flips':
    return [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
  rotations = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
  return rotations + [r[:, :, ::-1] for r in rotations]


@pytest.mark.parametrize('mode,count', [('flips', 4), ('dihedral', 8)])
def test_views_are_the_flips_and_rotations(mode, count):
  images = np.random.default_rng(0).uniform(size=(2, 5, 5, 3)).astype(
      'float32')
  got = sorted(np.asarray(v).tobytes() for v in tta.views(images, mode))
  want = sorted(np.ascontiguousarray(v).tobytes()
                for v in _numpy_views(images, mode))
  assert len(got) == count == len(set(got)) and got == want
  with pytest.raises(ValueError, match='tta'):
    tta.views(images, 'rot')


def _train(tiny_tfrecords, out, **settings):
  return train_tiny(tiny_tfrecords, out, model='cnn_baseline', image_size=32,
                    width=0.25, **settings)


def _images(n=3, size=32, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(
      'float32')


def _orientation_sensitive_model(size=8, classes=4, color_constancy='none'):
  """A softmax over a random linear map of the raw pixels (after colour
  constancy): every view of an image gets clearly different probabilities."""
  inputs = keras.Input((size, size, 3), name='image')
  x = keras.layers.Flatten()(color.apply(inputs, color_constancy))
  outputs = keras.layers.Dense(
      classes, activation='softmax', name='probabilities',
      kernel_initializer=keras.initializers.RandomNormal(stddev=1.0,
                                                         seed=3))(x)
  return keras.Model(inputs, outputs)


@pytest.mark.parametrize('mode', ['flips', 'dihedral'])
def test_exported_tta_is_the_mean_over_the_views(mode, tmp_path):
  model = _orientation_sensitive_model()
  export.export_serving_model(model, str(tmp_path), 8, tta=mode)
  loaded = tf.saved_model.load(str(tmp_path))
  images = _images(size=8)
  single = np.asarray(model(images))
  expected = np.mean([np.asarray(model(np.ascontiguousarray(v)))
                      for v in _numpy_views(images, mode)], axis=0)
  assert np.abs(expected - single).max() > 0.05
  for name in (features.IMAGE_SIGNATURE, features.EXAMPLE_SIGNATURE):
    if name == features.EXAMPLE_SIGNATURE:
      jpegs = [tf.io.encode_jpeg(tf.constant(np.round(i * 255), tf.uint8)
                                 ).numpy() for i in images]
      examples = [tf.train.Example(features=tf.train.Features(feature={
          features.IMAGE_KEY: tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[j]))})).SerializeToString()
                  for j in jpegs]
      got = loaded.signatures[name](examples=tf.constant(examples))
      pixels = preprocessing.decode_batch(tf.constant(jpegs), 8).numpy()
      want = np.mean([np.asarray(model(np.ascontiguousarray(v, 'float32')))
                      for v in _numpy_views(pixels, mode)], axis=0)
    else:
      got = loaded.signatures[name](images=tf.constant(images))
      want = expected
    np.testing.assert_allclose(got[features.PREDICTION_KEY].numpy(), want,
                               atol=1e-5)
  np.testing.assert_allclose(
      loaded.signatures[features.SINGLE_VIEW_IMAGE_SIGNATURE](
          images=tf.constant(images))[features.PREDICTION_KEY].numpy(),
      single, atol=1e-6)
  # 'none': the single view, no extra signature.
  export.export_serving_model(model, str(tmp_path / 'none'), 8)
  plain = tf.saved_model.load(str(tmp_path / 'none'))
  assert features.SINGLE_VIEW_IMAGE_SIGNATURE not in plain.signatures
  np.testing.assert_allclose(
      plain.signatures[features.IMAGE_SIGNATURE](images=tf.constant(images))[
          features.PREDICTION_KEY].numpy(), single, atol=1e-6)


def test_tta_signatures_average_the_single_view_model(tiny_tfrecords,
                                                      tmp_path):
  fn_args, history = _train(
      tiny_tfrecords, tmp_path, tta='dihedral', imbalance='none',
      logit_adjustment_tau=1.0, label_smoothing=0.1, lr_schedule='cosine',
      warmup_epochs=0.5, color_constancy='shades_of_gray',
      # The network's own softmax: a temperature fitted on the toy eval
      # split flattens it to near uniform, where views hardly differ.
      calibration='none')
  assert history['config']['tta'] == 'dihedral'
  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  assert features.single_view_image_signature(loaded.signatures) == (
      features.SINGLE_VIEW_IMAGE_SIGNATURE)
  images = _images()
  single = loaded.signatures[features.SINGLE_VIEW_IMAGE_SIGNATURE]
  def probabilities(signature, x):
    return signature(images=tf.constant(np.ascontiguousarray(x)))[
        features.PREDICTION_KEY].numpy()
  expected = np.mean([probabilities(single, v)
                      for v in _numpy_views(images, 'dihedral')], axis=0)
  averaged = probabilities(loaded.signatures[features.IMAGE_SIGNATURE], images)
  np.testing.assert_allclose(averaged, expected, rtol=1e-4, atol=1e-7)
  gradcam = loaded.signatures['serving_gradcam'](images=tf.constant(images))
  np.testing.assert_allclose(gradcam[features.PREDICTION_KEY].numpy(),
                             probabilities(single, images), atol=1e-5)
  # TFLite converts the single view, and agrees with it.
  model = tflite.convert(fn_args.serving_model_dir, 'float16')
  pixels = np.round(images * 255).astype(np.uint8)
  np.testing.assert_allclose(
      tflite.predict(model, pixels),
      probabilities(single, pixels.astype('float32') / 255), atol=2e-3)


def test_no_tta_keeps_the_plain_signatures(tiny_tfrecords, tmp_path):
  fn_args, _ = _train(tiny_tfrecords, tmp_path)
  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  assert features.SINGLE_VIEW_IMAGE_SIGNATURE not in loaded.signatures
  assert features.single_view_image_signature(loaded.signatures) == (
      features.IMAGE_SIGNATURE)


def test_tta_of_a_metadata_model_keeps_a_single_view_for_tflite(tmp_path):
  """mixed_input with test-time augmentation: serving_images averages the
  views; the single-view signature (raw metadata) and the metadata-vector
  signature (what its .tflite is converted from) are the plain model, so
  the parity gate compares like with like."""
  from mobile_export import data  # pylint: disable=g-import-not-at-top
  from mobile_export import parity  # pylint: disable=g-import-not-at-top
  model = registry.build('mixed_input', num_classes=7, image_size=32,
                         weights='none', backbone='cnn_baseline', width=0.25)
  export.export_serving_model(model, str(tmp_path), 32, with_metadata=True,
                              tta='flips')
  loaded = tf.saved_model.load(str(tmp_path))
  assert features.SINGLE_VIEW_IMAGE_SIGNATURE in loaded.signatures
  assert tflite.signature_key(str(tmp_path)) == (
      features.METADATA_VECTOR_SIGNATURE)
  images = _images(n=4)
  raw = {features.AGE_KEY: np.asarray([40.0, np.nan, 70.0, 5.0], np.float32),
         features.SEX_KEY: np.asarray(['female', 'male', 'unknown', ''],
                                      object),
         features.LOCALIZATION_KEY: np.asarray(['back', 'face', 'kneecap',
                                                'trunk'], object)}
  tensors = {k: tf.constant(v.astype(str) if v.dtype == object else v)
             for k, v in raw.items()}
  single = loaded.signatures[features.SINGLE_VIEW_IMAGE_SIGNATURE](
      images=tf.constant(images), **tensors)[features.PREDICTION_KEY].numpy()
  averaged = loaded.signatures[features.IMAGE_SIGNATURE](
      images=tf.constant(images), **tensors)[features.PREDICTION_KEY].numpy()
  vector = loaded.signatures[features.METADATA_VECTOR_SIGNATURE](
      images=tf.constant(images),
      metadata=tf.constant(data.encode_metadata(raw)))[
          features.PREDICTION_KEY].numpy()
  np.testing.assert_allclose(vector, single, atol=1e-6)
  want = np.mean([loaded.signatures[features.SINGLE_VIEW_IMAGE_SIGNATURE](
      images=tf.constant(np.ascontiguousarray(v)), **tensors)[
          features.PREDICTION_KEY].numpy()
                  for v in _numpy_views(images, 'flips')], axis=0)
  assert np.abs(want - single).max() > 1e-4  # The views differ.
  np.testing.assert_allclose(averaged, want, atol=1e-5)
  pixels = np.round(images * 255).astype(np.uint8)
  np.testing.assert_allclose(
      parity.saved_model_predict(str(tmp_path), pixels, metadata=raw),
      loaded.signatures[features.SINGLE_VIEW_IMAGE_SIGNATURE](
          images=tf.constant(pixels.astype('float32') / 255), **tensors)[
              features.PREDICTION_KEY].numpy(), atol=1e-5)
