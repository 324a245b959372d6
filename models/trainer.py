"""TFX Trainer entry point (``run_fn``) for every model in the registry.

The pipeline passes this file as the Trainer's ``module_file``: TFX packages
every module of this folder into a wheel whose version is a hash of their
contents, so editing any model code invalidates the Trainer's cache.  Settings
arrive in ``fn_args.custom_config`` (see ``Settings.trainer_config``); the
label list comes from the Examples artifact (``labels.txt``, written by
ingestion), so the model's classes are exactly the data's.
"""

import json
import os

from absl import logging
import keras
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from models import export
from models import metrics
from models import preprocessing
from models import registry

HISTORY_FILE = 'history.json'


def make_dataset(file_patterns, image_size: int, batch_size: int,
                 training: bool, seed: int) -> tf.data.Dataset:
  """Batches of (float32 image in [0, 1], int64 label)."""
  ds = preprocessing.image_label_dataset(file_patterns, image_size).cache()
  if training:
    ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
  return (ds.batch(batch_size)
          .map(lambda x, y: (preprocessing.to_model_input(x), y))
          .prefetch(tf.data.AUTOTUNE))


def class_weights(counts) -> dict:
  """R5's weights: total / (n_classes x count_c), over the classes present."""
  present = [c for c in counts if c > 0]
  total = sum(present)
  return {i: (total / (len(present) * c) if c else 0.0)
          for i, c in enumerate(counts)}


def run_fn(fn_args: FnArgs) -> None:
  cfg = fn_args.custom_config
  labels = preprocessing.read_labels(fn_args.train_files)
  image_size = int(cfg['image_size'])
  seed = int(cfg['seed'])
  keras.utils.set_random_seed(seed)

  counts = preprocessing.label_counts(fn_args.train_files, len(labels))
  logging.info('Train examples per class: %s', dict(zip(labels, counts)))
  missing = [name for name, c in zip(labels, counts) if c == 0]
  if missing:
    raise ValueError(f'the train split has no example of {missing}; add data '
                     'or change the split ratios')
  weights = class_weights(counts) if cfg['class_weights'] else None

  train_ds = make_dataset(fn_args.train_files, image_size, cfg['batch_size'],
                          training=True, seed=seed)
  eval_ds = make_dataset(fn_args.eval_files, image_size, cfg['batch_size'],
                         training=False, seed=seed)
  model = registry.build(cfg['model'], num_classes=len(labels),
                         image_size=image_size, width=cfg.get('width', 1.0))
  model.compile(
      optimizer=keras.optimizers.Adam(cfg['learning_rate']),
      loss='sparse_categorical_crossentropy',
      metrics=['accuracy', metrics.BalancedAccuracy(len(labels))])
  callbacks = [
      keras.callbacks.EarlyStopping(
          monitor='val_balanced_accuracy', mode='max',
          patience=cfg['early_stopping_patience'], restore_best_weights=True),
      keras.callbacks.ReduceLROnPlateau(
          monitor='val_loss', factor=0.5, patience=2, min_lr=1e-6),
      keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
  ]
  history = model.fit(train_ds, validation_data=eval_ds,
                      epochs=int(cfg['epochs']), class_weight=weights,
                      callbacks=callbacks, verbose=2)

  export.export_serving_model(model, fn_args.serving_model_dir, image_size)
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE),
                         'w') as f:
    json.dump({'history': {k: [float(v) for v in vs]
                           for k, vs in history.history.items()},
               'train_counts': dict(zip(labels, counts)),
               'class_weights': ({labels[i]: w for i, w in weights.items()}
                                 if weights else None),
               'config': cfg}, f, indent=2)
