"""Model code: the R5 baseline, class weights, metrics, run_fn and export."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
import tensorflow as tf

from models import cnn_baseline
from models import explain
from models import features
from models import metrics
from models import preprocessing
from models import registry
from models import trainer
from pipeline import configs
from tests.conftest import TINY_IMAGE_SIZE


def test_cnn_baseline_is_r5s_network_at_width_one():
  model = registry.build('cnn_baseline', num_classes=8, image_size=224)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128]
  assert all(c.kernel_size == (3, 3) for c in convs)
  bns = [l for l in model.layers
         if isinstance(l, keras.layers.BatchNormalization)]
  assert len(bns) == 6
  drops = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]
  assert drops == [0.15, 0.20, 0.25, 0.3]
  assert any(isinstance(l, keras.layers.GlobalAveragePooling2D)
             for l in model.layers)
  dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
  assert [d.units for d in dense] == [256, 8]
  assert model.output_shape == (None, 8)


def test_unknown_model_is_refused():
  with pytest.raises(ValueError, match='cnn_baseline'):
    registry.build('alexnet', num_classes=7, image_size=64)


def test_class_weights_are_r5s():
  # R5's train counts AK, BCC, BKL, DF, MEL, NV, SCC, VASC and its weights.
  counts = [1264, 3326, 2293, 192, 3774, 10639, 656, 205]
  weights = trainer.class_weights(counts)
  assert weights[3] == pytest.approx(14.55, abs=0.01)
  assert weights[5] == pytest.approx(0.263, abs=0.001)
  assert sum(w * c for w, c in zip(weights.values(), counts)) == \
      pytest.approx(sum(counts))


def test_keras_balanced_accuracy_matches_sklearn():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 200)
  probs = rng.random((200, 7))
  metric = metrics.BalancedAccuracy(7)
  metric.update_state(y[:120], probs[:120])
  metric.update_state(y[120:], probs[120:])
  assert float(metric.result()) == pytest.approx(
      balanced_accuracy_score(y, probs.argmax(axis=1)), abs=1e-6)


def test_preprocessing_matches_a_uint8_resize_client(tiny_tfrecords):
  record = next(iter(preprocessing.read_examples([tiny_tfrecords[0]])))
  ex = tf.io.parse_single_example(record, preprocessing.image_spec())
  pixels = preprocessing.decode_and_resize(ex[features.IMAGE_KEY], 32)
  assert pixels.dtype == tf.uint8 and pixels.shape == (32, 32, 3)
  model_input = preprocessing.to_model_input(pixels).numpy()
  assert 0.0 <= model_input.min() and model_input.max() <= 1.0
  np.testing.assert_allclose(model_input * 255, pixels.numpy(), atol=1e-4)


def test_calibration_sample_is_seeded_by_its_seed_alone(tiny_tfrecords,
                                                        tmp_path):
  # The exporter's and the Trainer's int8_qat phase's calibration set: the
  # same images whatever TensorFlow's global seed (each runs in its own
  # process under Kubeflow), drawn over every file, not only the first.
  files = [tiny_tfrecords[0], tiny_tfrecords[1]]
  everything = [r.numpy() for r in preprocessing.read_examples(files)]

  def sample(count, seed):
    return [r.numpy() for r in preprocessing.sample_examples(files, count,
                                                             seed)]
  keras.utils.set_random_seed(1)
  first = sample(12, 7)
  keras.utils.set_random_seed(2)
  assert sample(12, 7) == first
  assert sample(12, 8) != first
  assert len(first) == len(set(first)) == 12
  positions = [everything.index(r) for r in first]
  assert positions == sorted(positions)  # file order
  assert positions[-1] >= len(everything) // 2  # the second file too
  assert sample(10**6, 7) == everything
  empty = tmp_path / 'empty.gz'
  with tf.io.TFRecordWriter(str(empty), options='GZIP'):
    pass
  with pytest.raises(ValueError, match='no examples'):
    preprocessing.sample_examples([str(empty)], 5, 7)
  with pytest.raises(ValueError, match='> 0'):
    preprocessing.sample_examples(files, 0, 7)


def test_run_fn_trains_and_writes_history(trained_model):
  with open(os.path.join(trained_model.model_run_dir,
                         trainer.HISTORY_FILE)) as f:
    history = json.load(f)
  assert len(history['history']['loss']) == 2
  assert 'val_balanced_accuracy' in history['history']
  assert set(history['train_counts']) == set(configs.LABELS)
  assert history['class_weights']['df'] > history['class_weights']['nv']
  with open(os.path.join(trained_model.model_run_dir,
                         trainer.MODEL_SUMMARY_FILE)) as f:
    assert 'feature_map' in f.read()  # Keras' model.summary(), for the report.


def test_exported_model_answers_both_signatures(trained_model, tiny_tfrecords):
  loaded = tf.saved_model.load(trained_model.serving_model_dir)
  assert set(loaded.signatures) == {features.EXAMPLE_SIGNATURE,
                                    features.IMAGE_SIGNATURE,
                                    explain.GRADCAM_SIGNATURE}
  serialized = [r.numpy() for r in
                preprocessing.read_examples([tiny_tfrecords[1]]).take(5)]
  by_example = loaded.signatures[features.EXAMPLE_SIGNATURE](
      examples=tf.constant(serialized))[features.PREDICTION_KEY].numpy()
  jpegs = [tf.train.Example.FromString(s).features.feature[features.IMAGE_KEY]
           .bytes_list.value[0] for s in serialized]
  images = preprocessing.decode_batch(tf.constant(jpegs), TINY_IMAGE_SIZE)
  by_image = loaded.signatures[features.IMAGE_SIGNATURE](
      images=images)[features.PREDICTION_KEY].numpy()
  assert by_example.shape == (5, len(configs.LABELS))
  np.testing.assert_allclose(by_example.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(by_example, by_image, atol=1e-5)
  # The Grad-CAM signature predicts the same; one map per image in [0, 1].
  gradcam = loaded.signatures[explain.GRADCAM_SIGNATURE](images=images)
  np.testing.assert_allclose(gradcam[features.PREDICTION_KEY].numpy(),
                             by_image, atol=1e-5)
  heatmap = gradcam[explain.HEATMAP_KEY].numpy()
  assert heatmap.shape == (5, TINY_IMAGE_SIZE // 4, TINY_IMAGE_SIZE // 4)
  assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
  # Inference is deterministic: augmentation and dropout are off.
  again = loaded.signatures[features.IMAGE_SIGNATURE](
      images=images)[features.PREDICTION_KEY].numpy()
  np.testing.assert_array_equal(by_image, again)


def test_run_fn_refuses_a_train_split_missing_a_class(tiny_tfrecords, tmp_path):
  from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top
  examples = tmp_path / 'examples'  # Same data, a label list with one more.
  for split, path in zip(('train', 'eval'), tiny_tfrecords):
    os.makedirs(examples / f'Split-{split}')
    shutil.copy(path, examples / f'Split-{split}' / 'data.gz')
  with open(examples / features.LABELS_FILE, 'w') as f:
    f.write('\n'.join(configs.LABELS + ('scc',)) + '\n')
  config = configs.Settings(image_size=32, epochs=1).trainer_config()
  with pytest.raises(ValueError, match=r"no example of \['scc'\]"):
    trainer.run_fn(FnArgs(
        train_files=[str(examples / 'Split-train' / '*')],
        eval_files=[str(examples / 'Split-eval' / '*')],
        serving_model_dir=str(tmp_path / 's'),
        model_run_dir=str(tmp_path / 'r'), custom_config=config))


def test_labels_come_from_the_examples_artifact(tiny_tfrecords, tmp_path):
  assert preprocessing.read_labels([tiny_tfrecords[0]]) == list(configs.LABELS)
  # Another artifact's list, not the default one: read from its labels.txt.
  other = tmp_path / 'examples'
  (other / 'Split-train').mkdir(parents=True)
  shutil.copy(tiny_tfrecords[0], other / 'Split-train' / 'data.gz')
  (other / features.LABELS_FILE).write_text('Tumor Jinak\nEksim\nMEL\n')
  assert preprocessing.read_labels([str(other / 'Split-train' / '*')]) == [
      'Tumor Jinak', 'Eksim', 'MEL']
  (other / features.LABELS_FILE).write_text('MEL\n')
  with pytest.raises(ValueError, match='fewer than two labels'):
    preprocessing.read_labels([str(other / 'Split-train' / '*')])
  with pytest.raises(FileNotFoundError, match='labels.txt'):
    preprocessing.read_labels([str(tmp_path / 'Split-train' / '*')])
