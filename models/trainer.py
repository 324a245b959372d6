"""TFX Trainer entry point (``run_fn``) for every model in the registry.

Local runs pass this file as the Trainer's ``module_file``: TFX packages
every module of this folder into a wheel whose version is a hash of their
contents, so editing any model code invalidates the Trainer's cache.  In the
container image (Kubeflow / Vertex) the Trainer imports ``run_fn`` from the
installed project instead.  Settings arrive in ``fn_args.custom_config`` (see
``Settings.trainer_config``); the label list comes from the Examples artifact
(``labels.txt``, written by ingestion), so the model's classes are exactly the
data's.

Distribution (``distribution_strategy``): MultiWorkerMirroredStrategy when
``TF_CONFIG`` names several workers (what Vertex AI multi-replica jobs and
Kubeflow's TFJob set), MirroredStrategy when one machine has several GPUs,
else TensorFlow's default strategy, which is the single-worker behaviour.
Every worker runs ``run_fn``; only the chief writes the Trainer's outputs.
"""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from models import export
from models import metrics
from models import preprocessing
from models import registry

HISTORY_FILE = 'history.json'
MODEL_SUMMARY_FILE = 'model_summary.txt'  # Keras' model.summary(), for the run report.
# Non-chief workers keep their logs (TensorBoard, history) here, under
# model_run_dir, so that workers do not overwrite each other's files.
WORKER_RUN_SUBDIR = 'workers'


def cluster_task(tf_config: Dict) -> Tuple[int, str, int]:
  """(number of workers, this task's type, its index) from TF_CONFIG.

  Workers are the cluster's ``chief`` and ``worker`` tasks; without a
  TF_CONFIG the process is a single worker, its own chief.
  """
  cluster = tf_config.get('cluster', {})
  workers = len(cluster.get('chief', [])) + len(cluster.get('worker', []))
  task = tf_config.get('task', {})
  return max(workers, 1), task.get('type', 'chief'), int(task.get('index', 0))


def is_chief(tf_config: Dict) -> bool:
  """The chief writes the outputs: task ``chief``, else ``worker`` 0."""
  _, task_type, index = cluster_task(tf_config)
  has_chief = bool(tf_config.get('cluster', {}).get('chief'))
  return task_type == 'chief' or (task_type == 'worker' and index == 0
                                  and not has_chief)


class KerasMultiWorkerMirroredStrategy(
    tf.distribute.MultiWorkerMirroredStrategy):
  """MultiWorkerMirroredStrategy that accepts the reductions Keras 3 asks for.

  With more than one worker, ``model.fit`` of Keras 3.12 (TensorFlow backend)
  fails under TF 2.16's MultiWorkerMirroredStrategy in two places, both calls
  to ``strategy.reduce``:

  * ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first batch, a
    tuple, and the strategy only reduces single values ("Attempt to convert a
    value (PerReplica:...) with an unsupported type to a Tensor"; the TF
    source has ``TODO: support value being a nest``);
  * ``reduce_per_replica`` averages each step's scalar metric values with
    ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions").

  This strategy reduces each element of a nested value on its own, and a
  scalar across replicas only (``axis=None``), which is what both calls mean.
  Everything else is MultiWorkerMirroredStrategy's: variables, gradient
  all-reduce, dataset distribution.  Epoch-end metrics, which the callbacks
  read, come from the metric variables, summed over all replicas.
  """

  def reduce(self, reduce_op, value, axis):
    def reduce_one(v):
      rank = self.experimental_local_results(v)[0].shape.rank
      return super(KerasMultiWorkerMirroredStrategy, self).reduce(
          reduce_op, v, axis=None if rank == 0 else axis)
    return tf.nest.map_structure(reduce_one, value)


def distribution_strategy(tf_config: Dict) -> tf.distribute.Strategy:
  """The strategy for this process; see the module docstring.

  Must run before any other TensorFlow op: MultiWorkerMirroredStrategy sets
  up the collective ops of the TensorFlow runtime.
  """
  workers, _, _ = cluster_task(tf_config)
  if workers > 1:
    empty = sorted(job for job, tasks in tf_config['cluster'].items()
                   if not tasks)
    if empty:
      # TensorFlow 2.16 dies with a segmentation fault on these.
      raise ValueError(f'TF_CONFIG names jobs without tasks: {empty}')
    return KerasMultiWorkerMirroredStrategy()
  if len(tf.config.list_physical_devices('GPU')) > 1:
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def make_dataset(file_patterns, image_size: int, batch_size: int,
                 training: bool, seed: int) -> tf.data.Dataset:
  """Batches of (float32 image in [0, 1], int64 label).

  ``batch_size`` is the global batch: with several workers, each gets its
  part of every batch.  Sharding is by element (DATA), not by file: TFX's
  splits often have fewer files than there are workers (TensorFlow's default
  then fails: "Could not apply FILE based sharding"), and element sharding
  keeps every global batch what a single worker would have seen.  Without a
  multi-worker strategy the option has no effect.
  """
  ds = preprocessing.image_label_dataset(file_patterns, image_size).cache()
  if training:
    ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return (ds.batch(batch_size)
          .map(lambda x, y: (preprocessing.to_model_input(x), y))
          .prefetch(tf.data.AUTOTUNE)
          .with_options(options))


def class_weights(counts) -> dict:
  """R5's weights: total / (n_classes x count_c), over the classes present."""
  present = [c for c in counts if c > 0]
  total = sum(present)
  return {i: (total / (len(present) * c) if c else 0.0)
          for i, c in enumerate(counts)}


def weights_fingerprint(model: keras.Model) -> str:
  """sha256 of every weight's bytes: equal on all workers of one run."""
  digest = hashlib.sha256()
  for weight in model.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
                  .tobytes())
  return digest.hexdigest()


def run_fn(fn_args: FnArgs) -> None:
  """Trains, exports the serving model and writes the training history."""
  tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  strategy = distribution_strategy(tf_config)
  workers, task_type, task_index = cluster_task(tf_config)
  chief = is_chief(tf_config)
  logging.info('Training with %s: %d worker(s), %d replica(s) in sync; this '
               'process is %s %d%s', type(strategy).__name__, workers,
               strategy.num_replicas_in_sync, task_type, task_index,
               ' (chief)' if chief else '')
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
  # Variables (model, optimizer, metrics) are created under the strategy:
  # mirrored on every replica, and fit() all-reduces the gradients.
  with strategy.scope():
    model = registry.build(
        cfg['model'], num_classes=len(labels), image_size=image_size,
        width=cfg.get('width', 1.0),
        synchronized_batch_norm=strategy.num_replicas_in_sync > 1)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg['learning_rate']),
        loss='sparse_categorical_crossentropy',
        metrics=['accuracy', metrics.BalancedAccuracy(len(labels))])
  run_dir = (fn_args.model_run_dir if chief else os.path.join(
      fn_args.model_run_dir, WORKER_RUN_SUBDIR, f'{task_type}-{task_index}'))
  callbacks = [
      keras.callbacks.EarlyStopping(
          monitor='val_balanced_accuracy', mode='max',
          patience=cfg['early_stopping_patience'], restore_best_weights=True),
      keras.callbacks.ReduceLROnPlateau(
          monitor='val_loss', factor=0.5, patience=2, min_lr=1e-6),
      keras.callbacks.TensorBoard(log_dir=run_dir),
  ]
  history = model.fit(train_ds, validation_data=eval_ds,
                      epochs=int(cfg['epochs']), class_weight=weights,
                      callbacks=callbacks, verbose=2)

  # Every worker saves (saving can involve collective ops); only the chief's
  # copy is the Trainer's model, the others go to a scratch folder.
  if chief:
    export.export_serving_model(model, fn_args.serving_model_dir, image_size)
  else:
    scratch = tempfile.mkdtemp(prefix='skinlesion_worker_export_')
    try:
      export.export_serving_model(model, scratch, image_size)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    logging.info('Non-chief %s %d: export written to scratch %s, removed',
                 task_type, task_index, scratch)
  tf.io.gfile.makedirs(run_dir)
  lines = []
  model.summary(print_fn=lambda line, **unused: lines.append(line),
                line_length=100)
  with tf.io.gfile.GFile(os.path.join(run_dir, MODEL_SUMMARY_FILE), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with tf.io.gfile.GFile(os.path.join(run_dir, HISTORY_FILE), 'w') as f:
    json.dump({'history': {k: [float(v) for v in vs]
                           for k, vs in history.history.items()},
               'train_counts': dict(zip(labels, counts)),
               'class_weights': ({labels[i]: w for i, w in weights.items()}
                                 if weights else None),
               'distribution': {'strategy': type(strategy).__name__,
                                'workers': workers,
                                'replicas': strategy.num_replicas_in_sync,
                                'task': f'{task_type}-{task_index}',
                                'chief': chief,
                                'weights_sha256': weights_fingerprint(model)},
               'config': cfg}, f, indent=2)
