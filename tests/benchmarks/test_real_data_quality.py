"""benchmarks/real_data_quality.py's scoring, on a tiny trained model.

The ablation in BENCHMARKS.md reads every run with test-time augmentation
applied after training (``score_tta``); these tests pin that it scores the
same decisions as the exported signatures: with no views it is the
examples signature's score, with flips it is the hand-made average of the
four flipped images' probabilities.
"""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import real_data_quality
from models import features
from models import preprocessing
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import train_tiny


@pytest.fixture(scope='module', params=['cnn_baseline', 'mixed_input'])
def tiny_model(request, tiny_tfrecords, tmp_path_factory):
  out = tmp_path_factory.mktemp(request.param)
  settings = {'model': request.param, 'image_size': TINY_IMAGE_SIZE}
  if request.param == 'mixed_input':
    settings['backbone'] = 'cnn_baseline'
  fn_args, _ = train_tiny(tiny_tfrecords, out, **settings)
  labels = preprocessing.read_labels([tiny_tfrecords[0]])
  return fn_args.serving_model_dir, [tiny_tfrecords[1]], labels


def _single_view(serving, files):
  """(predict(images) -> probabilities, images, labels) by hand: the
  single-view signature on the split's decoded images (and metadata)."""
  model = tf.saved_model.load(serving)
  signature = model.signatures[
      features.single_view_image_signature(set(model.signatures))]
  with_metadata = features.METADATA_VECTOR_SIGNATURE in model.signatures
  spec = {**preprocessing.image_label_spec(),
          **(preprocessing.metadata_spec() if with_metadata else {})}
  parsed = tf.io.parse_example(
      next(iter(preprocessing.read_examples(files).batch(1000))), spec)
  images = preprocessing.decode_batch(parsed[features.IMAGE_KEY],
                                      TINY_IMAGE_SIZE).numpy()
  metadata = ({key: parsed[key] for key in preprocessing.metadata_spec()}
              if with_metadata else {})
  predict = lambda x: signature(images=tf.constant(x), **metadata)[
      features.PREDICTION_KEY].numpy()
  return predict, images, parsed[features.LABEL_KEY].numpy()


def test_no_views_scores_what_the_examples_signature_scores(tiny_model):
  serving, files, labels = tiny_model
  whole = real_data_quality.score(serving, files, labels)
  after = real_data_quality.score_tta(serving, files, labels, TINY_IMAGE_SIZE,
                                      modes=('none',))['none']
  for key in ('balanced_accuracy', 'accuracy', 'macro_f1', 'recall'):
    assert after[key] == whole[key], key


def test_flips_average_the_four_flipped_images(tiny_model):
  serving, files, _ = tiny_model
  predict, images, labels = _single_view(serving, files)
  views = [predict(view) for view in (images, images[:, :, ::-1],
                                      images[:, ::-1], images[:, ::-1, ::-1])]
  y_true, scored = real_data_quality.tta_probabilities(
      serving, files, TINY_IMAGE_SIZE, modes=('none', 'flips'))
  np.testing.assert_array_equal(y_true, labels)
  np.testing.assert_allclose(scored['none'], views[0], atol=1e-6)
  np.testing.assert_allclose(scored['flips'], np.mean(views, axis=0),
                             atol=1e-6)
  # The views differ, so the average is not the single view's.
  assert np.abs(scored['flips'] - scored['none']).max() > 1e-4


def test_colour_probes_recolour_as_documented():
  images = tf.constant([[[[0.5, 0.5, 0.5], [0.9, 0.2, 0.1]]]], tf.float32)
  warm = real_data_quality.recolour(images, 'warm_white_balance').numpy()
  np.testing.assert_allclose(warm[0, 0, 0], [0.6, 0.5, 0.4], atol=1e-6)
  np.testing.assert_allclose(warm[0, 0, 1], [1.0, 0.2, 0.08], atol=1e-6)
  grey = real_data_quality.recolour(images, 'desaturated').numpy()
  # A grey pixel stays grey; a coloured one moves half-way to its luma.
  np.testing.assert_allclose(grey[0, 0, 0], [0.5, 0.5, 0.5], atol=1e-6)
  luma = 0.299 * 0.9 + 0.587 * 0.2 + 0.114 * 0.1
  np.testing.assert_allclose(grey[0, 0, 1],
                             luma + 0.5 * (np.array([0.9, 0.2, 0.1]) - luma),
                             atol=1e-6)


def test_colour_probes_score_the_recoloured_images(tiny_model):
  serving, files, _ = tiny_model
  y_true, scored = real_data_quality.colour_probe_probabilities(
      serving, files, TINY_IMAGE_SIZE, probes=('cool_white_balance',))
  predict, images, labels = _single_view(serving, files)
  cool = np.clip(images * np.array([0.8, 1.0, 1.2], np.float32), 0, 1)
  np.testing.assert_array_equal(y_true, labels)
  np.testing.assert_allclose(scored['cool_white_balance'], predict(cool),
                             atol=1e-6)
  assert np.abs(scored['cool_white_balance'] - predict(images)).max() > 1e-5


def test_image_only_scores_the_model_with_its_metadata_missing(tiny_model):
  serving, files, labels = tiny_model
  scored = real_data_quality.score_image_only(serving, files, labels,
                                              TINY_IMAGE_SIZE)
  model = tf.saved_model.load(serving)
  if features.METADATA_VECTOR_SIGNATURE not in model.signatures:
    assert scored is None
    return
  _, images, y_true = _single_view(serving, files)
  signature = model.signatures[features.single_view_image_signature(
      set(model.signatures))]
  n = len(images)
  missing = signature(
      images=tf.constant(images),
      age=tf.constant(np.full(n, np.nan, np.float32)),
      sex=tf.constant([features.UNKNOWN] * n),
      localization=tf.constant([features.UNKNOWN] * n))[
          features.PREDICTION_KEY].numpy()
  by_hand = real_data_quality.decision_metrics(y_true, missing, labels)
  for key in ('balanced_accuracy', 'accuracy', 'recall'):
    assert scored[key] == by_hand[key], key


def test_each_run_is_checked_against_the_subgroup_gates(tiny_model,
                                                        tiny_tfrecords):
  """What real_data_quality records per run (``subgroup_gates``): the
  pipeline's gates on the scored split, in brief."""
  import os  # pylint: disable=g-import-not-at-top
  from benchmarks import gates_on_split  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  serving, _, _ = tiny_model
  examples = os.path.dirname(os.path.dirname(tiny_tfrecords[1]))
  settings = configs.Settings(min_subgroup_examples=1,
                              min_subgroup_class_examples=1,
                              max_subgroup_gap=0.0)
  report = gates_on_split.gates_on_split(serving, examples, 'eval', settings)
  brief = gates_on_split.summary(report)
  assert list(brief['families']) == list(configs.SUBGROUP_GAP_FAMILIES)
  assert brief['passed'] == all(f['passed'] for f in brief['families'].values())
  for gate in report['subgroup_gates']:
    assert gate['bound'] == 0.0
    # A group fails exactly when its whole interval lies below -max_gap.
    for entry in gate['groups'].values():
      assert entry['passed'] == (not entry['difference']['upper'] < 0.0)
    assert brief['families'][gate['slice_family']]['passed'] == (
        not gate['failed_groups'])
  assert report['examples'] == len(list(
      preprocessing.read_examples([tiny_tfrecords[1]])))
