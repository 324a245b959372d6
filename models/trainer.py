"""TFX Trainer entry point (``run_fn``) for every model in the registry.

Local runs pass this file as the Trainer's ``module_file``: TFX packages
every module of this folder into a wheel whose version is a hash of their
contents, so editing any model code invalidates the Trainer's cache.  In the
container image (Kubeflow / Vertex) the Trainer imports ``run_fn`` from the
installed project instead.  Settings arrive in ``fn_args.custom_config`` (see
``Settings.trainer_config``); the label list comes from the Examples artifact
(``labels.txt``, written by ingestion), so the model's classes are exactly the
data's.

Training (``fit_phases``): a pretrained backbone trains in two phases (head
over the frozen backbone, then its top ``fine_tune_layers`` layers at
``fine_tune_learning_rate``); other models in one; ``int8_weight_epochs``
adds a last phase on convolution kernels rounded to the int8 file's grid
(models/int8_weights.py).  ``imbalance`` picks
class weights, class-balanced sampling (``make_dataset``) or focal loss
(models/losses.py).  The recipe for balanced accuracy (docs/training.md),
each off by default: logit adjustment and label smoothing in the loss
(``make_loss``), a per-phase cosine learning rate with warm-up
(``learning_rate_schedule``; it replaces ReduceLROnPlateau), colour
constancy in the model (models/color.py) and test-time augmentation in the
exported signatures (models/tta.py).  Mixed precision (``precision_policy``) and XLA
(``jit_compile``) are settings; ``history.json`` keeps the per-epoch curves
of every phase, the phase boundaries and the model summary.  The TFX
Tuner's entry point is ``tuner_fn`` in models/tuner.py, which imports this
module (never the other way round).

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
import time
from typing import Callable, Dict, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from models import calibration
from models import domain
from models import export
from models import features
from models import int8_weights
from models import quantization_aware
from models import losses
from models import metrics
from models import preprocessing
from models import registry

HISTORY_FILE = 'history.json'
MODEL_SUMMARY_FILE = 'model_summary.txt'  # Keras' model.summary(), for the run report.
# Non-chief workers keep their logs (TensorBoard, history) here, under
# model_run_dir, so that workers do not overwrite each other's files.
WORKER_RUN_SUBDIR = 'workers'
INT8_WEIGHTS_PHASE = 'int8_weights'
INT8_QAT_PHASE = 'int8_qat'


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


def _parse_fn(image_size: int, with_metadata: bool):
  """serialized tf.Example -> (uint8 image or dict of inputs, int64 label)."""
  spec = preprocessing.image_label_spec()
  if with_metadata:
    spec.update(preprocessing.metadata_spec())

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    image = preprocessing.decode_and_resize(ex[features.IMAGE_KEY], image_size)
    if with_metadata:
      return ({'image': image, **preprocessing.metadata_inputs(ex)},
              ex[features.LABEL_KEY])
    return image, ex[features.LABEL_KEY]
  return parse


def _to_model_input(x, y):
  if isinstance(x, dict):
    return {**x, 'image': preprocessing.to_model_input(x['image'])}, y
  return preprocessing.to_model_input(x), y


def _label_of(serialized):
  spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  return tf.io.parse_single_example(serialized, spec)[features.LABEL_KEY]


def make_dataset(file_patterns, image_size: int, batch_size: int,
                 training: bool, seed: int, with_metadata: bool = False,
                 cache: bool = True, balanced_classes: int = 0
                 ) -> tf.data.Dataset:
  """Batches of (float32 image in [0, 1] -- or mixed_input's dict --, label).

  Decoding runs in parallel (AUTOTUNE) and in a deterministic order; the
  decoded, resized uint8 images are cached in memory after the first pass
  (``cache``: 8,943 HAM10000 images at 128 px take 440 MB); training data is
  shuffled with ``seed``; batches are prefetched.

  ``balanced_classes`` (training only; the number of classes): draw every
  class equally often (class-balanced sampling): one repeated, shuffled
  stream per class, sampled uniformly with ``seed``; the dataset is then
  infinite and the caller sets steps_per_epoch.  Records are filtered by
  label before decoding, so each image is decoded once.

  ``batch_size`` is the global batch: with several workers, each gets its
  part of every batch.  Sharding is by element (DATA), not by file: TFX's
  splits often have fewer files than there are workers (TensorFlow's default
  then fails: "Could not apply FILE based sharding"), and element sharding
  keeps every global batch what a single worker would have seen.  Without a
  multi-worker strategy the option has no effect.
  """
  parse = _parse_fn(image_size, with_metadata)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  records = preprocessing.read_examples(file_patterns)
  if training and balanced_classes:
    streams = []
    for c in range(balanced_classes):
      stream = records.filter(
          lambda s, c=c: tf.equal(_label_of(s), c)).map(
              parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      if cache:
        stream = stream.cache()
      streams.append(stream.shuffle(1024, seed=seed + c,
                                    reshuffle_each_iteration=True).repeat())
    ds = tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / balanced_classes] * balanced_classes,
        seed=seed, stop_on_empty_dataset=False)
  else:
    ds = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
    if cache:
      ds = ds.cache()
    if training:
      ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
  return (ds.batch(batch_size)
          .map(_to_model_input, num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=True)
          .prefetch(tf.data.AUTOTUNE)
          .with_options(options))


def calibration_dataset(file_patterns, image_size: int, batch_size: int,
                        count: int, seed: int,
                        with_metadata: bool = False) -> tf.data.Dataset:
  """Batches of the images (and metadata) MobileExporter calibrates the int8
  file on, with the same ``count`` and ``seed``, in make_dataset's form."""
  return (preprocessing.sample_examples(file_patterns, count, seed)
          .map(_parse_fn(image_size, with_metadata)).batch(batch_size)
          .map(_to_model_input))


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


def precision_policy(enabled: bool) -> str:
  """Keras dtype policy: mixed_bfloat16 on GPUs of compute capability >= 8
  (Ampere, Hopper), mixed_float16 on older GPUs, float32 on CPU or when
  mixed precision is off."""
  gpus = tf.config.list_physical_devices('GPU')
  if not enabled or not gpus:
    return 'float32'
  details = tf.config.experimental.get_device_details(gpus[0])
  major = (details.get('compute_capability') or (0, 0))[0]
  return 'mixed_bfloat16' if major >= 8 else 'mixed_float16'


def build_model(cfg: Dict, num_classes: int, synchronized_batch_norm: bool,
                policy: str) -> keras.Model:
  """The registry model of cfg under the dtype policy (its output layer is
  float32 in every policy)."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    return registry.build(
        cfg['model'], num_classes=num_classes,
        image_size=int(cfg['image_size']),
        **registry.options_from_config(cfg, synchronized_batch_norm))
  finally:
    keras.mixed_precision.set_global_policy(previous)


def make_loss(cfg: Dict, class_counts=None):
  """The training loss of cfg (models/losses.py).

  ``imbalance`` 'focal_loss' gives the focal loss; ``logit_adjustment_tau``
  > 0 the logit-adjusted cross-entropy, whose prior is the train split's
  class frequencies (``class_counts``); ``label_smoothing`` > 0 smooths the
  targets of either.  Everything off: Keras' sparse cross-entropy.
  """
  tau = float(cfg.get('logit_adjustment_tau') or 0.0)
  smoothing = float(cfg.get('label_smoothing') or 0.0)
  imbalance = cfg.get('imbalance', 'class_weights')
  if tau and imbalance != 'none':
    raise ValueError(f'logit_adjustment_tau > 0 needs imbalance \'none\' '
                     f'(it corrects the class prior itself), got '
                     f'{imbalance!r}')
  if imbalance == 'focal_loss':
    return losses.SparseCategoricalFocalLoss(
        gamma=float(cfg.get('focal_gamma', 2.0)), label_smoothing=smoothing)
  if not tau and not smoothing:
    return 'sparse_categorical_crossentropy'
  prior = None
  if tau:
    if class_counts is None:
      raise ValueError('logit adjustment needs the train split\'s class '
                       'counts (class_counts)')
    prior = [c / sum(class_counts) for c in class_counts]
  return losses.SparseCategoricalAdjustedCrossentropy(
      class_prior=prior, tau=tau, label_smoothing=smoothing)


def epoch_steps(counts, batch_size: int) -> int:
  """Batches in one pass over a split with these class counts."""
  return max(1, -(-sum(counts) // batch_size))


def learning_rate_schedule(cfg: Dict, learning_rate: float, epochs: int,
                           steps_per_epoch: int):
  """One phase's learning rate: the constant ``learning_rate``, or with
  ``lr_schedule`` 'cosine' a cosine decay from it to 0 over the phase's
  ``epochs * steps_per_epoch`` steps, after a linear warm-up from 0 over its
  first ``warmup_epochs`` epochs (a fraction of an epoch allowed)."""
  schedule = cfg.get('lr_schedule', 'constant')
  if schedule == 'constant':
    return learning_rate
  if schedule != 'cosine':
    raise ValueError(f'unknown lr_schedule {schedule!r} (see '
                     'configs.LR_SCHEDULES)')
  total = max(1, int(epochs) * int(steps_per_epoch))
  warmup = min(total, int(round(float(cfg.get('warmup_epochs') or 0.0)
                                * steps_per_epoch)))
  if not warmup:
    return keras.optimizers.schedules.CosineDecay(learning_rate, total)
  return keras.optimizers.schedules.CosineDecay(
      0.0, max(1, total - warmup), warmup_target=learning_rate,
      warmup_steps=warmup)


def make_optimizer(cfg: Dict, learning_rate,
                   steps_per_epoch: Optional[int] = None
                   ) -> keras.optimizers.Optimizer:
  """Adam at ``learning_rate`` (a float or a Keras schedule).

  With ``ema_momentum`` > 0 it keeps an exponential moving average of the
  trainable weights (Keras' ``use_ema``: average = m * average + (1 - m) *
  weights after every step) and writes the average into the model every
  ``steps_per_epoch`` steps, i.e. at the end of each epoch, before
  validation: the epoch's validation metrics, early stopping's best weights
  and what fit() leaves in the model (Keras writes the average at the end of
  fit too) are the averaged weights, and training goes on from them.
  Without ``steps_per_epoch`` the average is written at the end of fit only.
  """
  momentum = float(cfg.get('ema_momentum') or 0.0)
  if not momentum:
    return keras.optimizers.Adam(learning_rate)
  return keras.optimizers.Adam(
      learning_rate, use_ema=True, ema_momentum=momentum,
      ema_overwrite_frequency=int(steps_per_epoch) if steps_per_epoch
      else None)


def compile_model(model: keras.Model, cfg: Dict, num_classes: int,
                  learning_rate, class_counts=None,
                  steps_per_epoch: Optional[int] = None) -> None:
  """Compiles with make_optimizer(cfg, learning_rate, steps_per_epoch) and
  make_loss(cfg, class_counts)."""
  model.compile(
      optimizer=make_optimizer(cfg, learning_rate, steps_per_epoch),
      loss=make_loss(cfg, class_counts),
      metrics=['accuracy', metrics.BalancedAccuracy(num_classes)],
      jit_compile=bool(cfg.get('jit_compile', False)),
      run_eagerly=bool(cfg.get('run_eagerly', False)))


def imbalance_weights(cfg: Dict, counts) -> Optional[dict]:
  """Class weights for fit(), only when the imbalance method is theirs."""
  method = cfg.get('imbalance', 'class_weights')
  if method is True or method == 'class_weights':  # bool: older configs
    return class_weights(counts)
  return None


def training_phases(model: keras.Model, cfg: Dict) -> list:
  """[(name, epochs, learning_rate, fine_tune_layers)] for this model.

  A pretrained backbone trains in two phases: the head over the frozen
  backbone, then the backbone's top fine_tune_layers layers too, at the
  lower fine_tune_learning_rate.  Other models (cnn_baseline, backbones
  from random weights) train everything in one phase.
  """
  if registry.pretrained_backbone(model) is None:
    phases = [('train', int(cfg['epochs']), float(cfg['learning_rate']),
               None)]
  else:
    phases = [('head', int(cfg['epochs']), float(cfg['learning_rate']), 0)]
    if int(cfg.get('fine_tune_epochs', 0)) > 0:
      phases.append(('fine_tune', int(cfg['fine_tune_epochs']),
                     float(cfg['fine_tune_learning_rate']),
                     int(cfg['fine_tune_layers'])))
  if int(cfg.get('int8_weight_epochs', 0)) > 0:
    # On the last phase's trainable set, minus the (rounded) convolutions.
    phases.append((INT8_WEIGHTS_PHASE, int(cfg['int8_weight_epochs']),
                   phases[-1][2], None))
  if int(cfg.get('int8_qat_epochs', 0)) > 0:
    # Every layer, from the model as the phases before left it.
    phases.append((INT8_QAT_PHASE, int(cfg['int8_qat_epochs']),
                   float(cfg['int8_qat_learning_rate']), None))
  return phases


def fit_phases(model: keras.Model, cfg: Dict, num_classes: int, train_ds,
               eval_ds, strategy: tf.distribute.Strategy,
               callbacks_fn: Callable[[], list], class_weight=None,
               steps_per_epoch: Optional[int] = None,
               verbose: int = 2, class_counts=None,
               calibration: Optional[tf.data.Dataset] = None
               ) -> Tuple[Dict, list]:
  """Runs training_phases; returns (per-epoch history, phase boundaries).

  Each phase recompiles (a new optimizer at its learning rate, or its own
  cosine schedule from it over its own steps: learning_rate_schedule) and
  gets fresh callbacks (early stopping restores the phase's best weights).
  ``class_counts``: the train split's, for logit adjustment's prior and, when
  ``steps_per_epoch`` is None (one pass), a cosine schedule's length.
  ``calibration``: the int8_qat phase's (calibration_dataset).
  """
  history: Dict[str, list] = {}
  boundaries = []
  epoch = 0
  phases = [p for p in training_phases(model, cfg) if p[1] > 0]
  budget = float(cfg.get('max_train_minutes') or 0) * 60.0
  start = time.monotonic()
  for index, (name, epochs, learning_rate, fine_tune_layers) in enumerate(
      phases):
    extra = []
    if budget:
      # What is left of the budget, shared by the remaining phases in
      # proportion to their epochs.
      left = budget - (time.monotonic() - start)
      share = epochs / sum(p[1] for p in phases[index:])
      extra = [TimeBudget(max(0.0, left * share))]
    # The phase's steps per epoch (a cosine schedule's length, weight
    # averaging's write): given, or one pass over the train split.
    steps = steps_per_epoch
    if steps is None and class_counts is not None:
      steps = epoch_steps(class_counts, int(cfg['batch_size']))
    elif steps is None and cfg.get('lr_schedule') == 'cosine':
      raise ValueError('a cosine schedule over one pass per epoch needs '
                       'the train split\'s class_counts')
    if name == INT8_QAT_PHASE:
      if calibration is None:
        raise ValueError('the int8_qat phase needs the calibration images '
                         '(calibration_dataset)')
      result, details = quantization_aware.fit(
          model, train_ds, eval_ds, strategy, learning_rate,
          float(cfg['int8_qat_consistency']), calibration, epoch, epochs,
          steps_per_epoch, extra, verbose)
    else:
      result, details = _fit_phase(
          model, cfg, num_classes, train_ds, eval_ds, strategy, name,
          learning_rate, fine_tune_layers, epoch, epochs, steps,
          steps_per_epoch, callbacks_fn() + extra, class_weight, verbose,
          class_counts)
    ran = len(result.history.get('loss', []))
    for key, values in result.history.items():
      # Keys first seen in a later phase are padded for the earlier epochs.
      history.setdefault(key, [None] * epoch).extend(
          float(v) for v in values)
    boundaries.append({'phase': name, 'first_epoch': epoch,
                       'epochs': ran, 'max_epochs': epochs,
                       'learning_rate': learning_rate,
                       'lr_schedule': cfg.get('lr_schedule', 'constant'),
                       'fine_tune_layers': fine_tune_layers,
                       'trainable_weights': len(model.trainable_weights),
                       **details,
                       'stopped_by_time_budget': bool(
                           extra and extra[0].stopped)})
    epoch += ran
  return history, boundaries


def _fit_phase(model, cfg, num_classes, train_ds, eval_ds, strategy, name,
               learning_rate, fine_tune_layers, epoch, epochs, steps,
               steps_per_epoch, callbacks, class_weight, verbose,
               class_counts):
  """One compiled fit() phase of fit_phases: (History, phase details)."""
  details = {}
  with strategy.scope():
    if name == INT8_WEIGHTS_PHASE:
      details['int8_rounded_convolutions'] = int8_weights.round_and_freeze(
          model)
    elif fine_tune_layers is not None:
      registry.set_trainable(model, fine_tune_layers)
    compile_model(model, cfg, num_classes,
                  learning_rate_schedule(cfg, learning_rate, epochs, steps),
                  class_counts, steps)
  result = model.fit(train_ds, validation_data=eval_ds,
                     initial_epoch=epoch, epochs=epoch + epochs,
                     steps_per_epoch=steps_per_epoch,
                     class_weight=class_weight, callbacks=callbacks,
                     verbose=verbose)
  return result, details


def phase_callbacks(cfg: Dict, tensorboard_dir: Optional[str] = None) -> list:
  """A phase's fresh callbacks: early stopping on val balanced accuracy
  (restoring the phase's best weights), plateau_callbacks, TensorBoard."""
  return [keras.callbacks.EarlyStopping(
      monitor='val_balanced_accuracy', mode='max',
      patience=int(cfg['early_stopping_patience']),
      restore_best_weights=True), *plateau_callbacks(cfg)] + (
          [keras.callbacks.TensorBoard(log_dir=tensorboard_dir)]
          if tensorboard_dir else [])


def plateau_callbacks(cfg: Dict) -> list:
  """ReduceLROnPlateau (halve the rate after 2 epochs without a lower
  val_loss) with a constant learning rate; none with a schedule, whose rate
  Keras does not let a callback set."""
  if cfg.get('lr_schedule', 'constant') != 'constant':
    return []
  return [keras.callbacks.ReduceLROnPlateau(
      monitor='val_loss', factor=0.5, patience=2, min_lr=1e-6)]


class TimeBudget(keras.callbacks.Callback):
  """Stops training at the end of the first epoch past ``seconds``."""

  def __init__(self, seconds: float):
    super().__init__()
    self.seconds = seconds
    self.stopped = False

  def on_train_begin(self, logs=None):
    self._start = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    if time.monotonic() - self._start > self.seconds:
      self.stopped = True
      self.model.stop_training = True


def model_summary(model: keras.Model) -> str:
  lines = []
  model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line),
                expand_nested=False)
  return '\n'.join(lines)


def apply_hyperparameters(cfg: Dict, hyperparameters) -> Dict:
  """cfg with the Tuner's best values (learning_rate, dropout,
  fine_tune_layers) when the Trainer got them."""
  if not hyperparameters:
    return dict(cfg)
  import keras_tuner  # pylint: disable=g-import-not-at-top
  values = (keras_tuner.HyperParameters.from_config(hyperparameters).values
            if 'space' in hyperparameters else dict(hyperparameters))
  out = dict(cfg)
  out.update({k: v for k, v in values.items() if k in cfg})
  return out


def fit_calibration(model: keras.Model, cfg: Dict, eval_ds
                    ) -> Tuple[float, Dict]:
  """(temperature, report) for the exported signatures.

  ``cfg['calibration']``: 'temperature' fits T on the eval split's
  predictions (models/calibration.py); 'none' keeps the softmax (T = 1).
  ``cfg['prior_correction']``: 'balanced' then fits per-class logit offsets
  on the same predictions (calibration.fit_prior_correction), recorded under
  the report's 'prior_correction' (calibration.prior_offsets reads them).
  """
  method = cfg.get('calibration', 'temperature')
  prior = cfg.get('prior_correction', 'none')
  if method not in domain.CALIBRATION_METHODS:
    raise ValueError(f'unknown calibration method {method!r}; choose from '
                     f'{domain.CALIBRATION_METHODS}')
  if prior not in domain.PRIOR_CORRECTIONS:
    raise ValueError(f'unknown prior correction {prior!r}; choose from '
                     f'{domain.PRIOR_CORRECTIONS}')
  report = {'method': 'none', 'temperature': 1.0}
  if method == 'none' and prior == 'none':
    return 1.0, report
  probabilities, labels = [], []
  for x, y in eval_ds:
    probabilities.append(
        tf.cast(model(x, training=False), tf.float32).numpy())
    labels.append(np.asarray(y))
  probabilities = np.concatenate(probabilities)
  labels = np.concatenate(labels)
  temperature = 1.0
  if method == 'temperature':
    temperature, report = calibration.fit_temperature(
        probabilities, labels, bins=int(cfg['calibration_bins']))
    report['fitted_on'] = 'eval split'
    logging.info('Temperature scaling on %d eval examples: T = %.4f, NLL '
                 '%.4f -> %.4f, ECE %.4f -> %.4f', report['examples'],
                 temperature, report['nll_before'], report['nll_after'],
                 report['ece_before'], report['ece_after'])
  if prior == 'balanced':
    _, prior_report = calibration.fit_prior_correction(
        probabilities, labels, temperature)
    prior_report['fitted_on'] = 'eval split'
    report['prior_correction'] = prior_report
    logging.info('Prior correction on the eval split: %s', prior_report)
  return temperature, report


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
  cfg = apply_hyperparameters(fn_args.custom_config,
                              getattr(fn_args, 'hyperparameters', None))
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
  weights = imbalance_weights(cfg, counts)
  balanced = cfg.get('imbalance') == 'balanced_sampling'
  with_metadata = registry.uses_metadata(cfg['model'])
  cache = bool(cfg.get('cache_images', True))
  batch_size = int(cfg['batch_size'])
  train_ds = make_dataset(fn_args.train_files, image_size, batch_size,
                          training=True, seed=seed,
                          with_metadata=with_metadata, cache=cache,
                          balanced_classes=len(labels) if balanced else 0)
  eval_ds = make_dataset(fn_args.eval_files, image_size, batch_size,
                         training=False, seed=seed,
                         with_metadata=with_metadata, cache=cache)
  steps_per_epoch = int(cfg.get('steps_per_epoch') or 0) or None
  if balanced and steps_per_epoch is None:
    # An epoch of the balanced (infinite) stream: as many images as the
    # train split has.
    steps_per_epoch = epoch_steps(counts, batch_size)
  policy = precision_policy(bool(cfg.get('mixed_precision', True)))
  logging.info('dtype policy %s, XLA %s', policy,
               bool(cfg.get('jit_compile', False)))
  # Variables (model, optimizer, metrics) are created under the strategy:
  # mirrored on every replica, and fit() all-reduces the gradients.
  with strategy.scope():
    model = build_model(cfg, len(labels),
                        strategy.num_replicas_in_sync > 1, policy)
  run_dir = (fn_args.model_run_dir if chief else os.path.join(
      fn_args.model_run_dir, WORKER_RUN_SUBDIR, f'{task_type}-{task_index}'))
  tensorboard = os.path.join(run_dir, 'tensorboard')
  int8_calibration = calibration_dataset(
      fn_args.train_files, image_size, batch_size,
      int(cfg['int8_qat_calibration_examples']), seed, with_metadata) if int(
          cfg.get('int8_qat_epochs', 0)) > 0 else None
  history, phases = fit_phases(model, cfg, len(labels), train_ds, eval_ds,
                               strategy,
                               lambda: phase_callbacks(cfg, tensorboard),
                               class_weight=weights,
                               steps_per_epoch=steps_per_epoch,
                               class_counts=counts,
                               calibration=int8_calibration)

  temperature, calibration_report = fit_calibration(model, cfg, eval_ds)
  calibration.fold_temperature(model, temperature, registry.OUTPUT_LAYER,
                               calibration.prior_offsets(calibration_report))
  # Every worker saves (saving can involve collective ops); only the chief's
  # copy is the Trainer's model, the others go to a scratch folder.
  if chief:
    export.export_serving_model(model, fn_args.serving_model_dir, image_size,
                                with_metadata=with_metadata,
                                tta=cfg.get('tta', 'none'))
    calibration.write(fn_args.serving_model_dir, calibration_report)
  else:
    scratch = tempfile.mkdtemp(prefix='skinlesion_worker_export_')
    try:
      export.export_serving_model(model, scratch, image_size,
                                  with_metadata=with_metadata,
                                  tta=cfg.get('tta', 'none'))
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
    json.dump({'history': history,
               'phases': phases,
               'train_counts': dict(zip(labels, counts)),
               'class_weights': ({labels[i]: w for i, w in weights.items()}
                                 if weights else None),
               'imbalance': cfg.get('imbalance'),
               'calibration': calibration_report,
               'dtype_policy': policy,
               'distribution': {'strategy': type(strategy).__name__,
                                'workers': workers,
                                'replicas': strategy.num_replicas_in_sync,
                                'task': f'{task_type}-{task_index}',
                                'chief': chief,
                                'weights_sha256': weights_fingerprint(model)},
               'model_summary': model_summary(model),
               'config': cfg}, f, indent=2)
