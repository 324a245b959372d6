"""TFX Tuner entry point (``tuner_fn``): KerasTuner random search.

Off by default; ``Settings.tuner_trials > 0`` adds TFX's Tuner component to
the pipeline (pipeline/pipeline.py), and the Trainer then trains with the
best hyperparameters it found (``fn_args.hyperparameters``, applied by
``trainer.apply_hyperparameters``).  The search space:

  * ``learning_rate``: phase-1 rate, log-uniform in [1e-4, 3e-3];
  * ``dropout``: before the classification layer, 0.2 / 0.3 / 0.5;
  * ``fine_tune_layers``: backbone layers trained in phase 2, 20 / 60 / 100
    (models with a pretrained backbone only; others ignore it).

Each trial is the Trainer's own two-phase training (``trainer.fit_phases``)
with ``tuner_epochs`` epochs per phase, scored by the best validation
balanced accuracy on the eval split.
"""

from typing import Dict

import keras_tuner as kt
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner.component import TunerFnResult

from models import preprocessing
from models import registry
from models import trainer

OBJECTIVE = 'val_balanced_accuracy'


def search_space(hp: kt.HyperParameters, cfg: Dict) -> Dict:
  """cfg with this trial's values."""
  out = dict(cfg)
  out['learning_rate'] = hp.Float('learning_rate', 1e-4, 3e-3,
                                  sampling='log')
  out['dropout'] = hp.Choice('dropout', [0.2, 0.3, 0.5])
  out['fine_tune_layers'] = hp.Choice('fine_tune_layers', [20, 60, 100])
  epochs = int(cfg.get('tuner_epochs', 2))
  out['epochs'] = epochs
  out['fine_tune_epochs'] = epochs if int(cfg.get('fine_tune_epochs', 0)) else 0
  return out


class SkinLesionHyperModel(kt.HyperModel):
  """Builds the configured registry model; fits it as the Trainer does."""

  def __init__(self, cfg: Dict, num_classes: int, class_weight,
               steps_per_epoch, class_counts=None):
    super().__init__(name=cfg['model'])
    self.cfg = cfg
    self.num_classes = num_classes
    self.class_weight = class_weight
    self.steps_per_epoch = steps_per_epoch
    self.class_counts = class_counts  # The train split's (trainer.make_loss).

  def build(self, hp):
    cfg = search_space(hp, self.cfg)
    model = trainer.build_model(
        cfg, self.num_classes, False,
        trainer.precision_policy(bool(cfg.get('mixed_precision', True))))
    trainer.compile_model(model, cfg, self.num_classes, cfg['learning_rate'],
                          self.class_counts)
    return model

  def fit(self, hp, model, x, validation_data=None, callbacks=None, **kwargs):
    del kwargs
    cfg = search_space(hp, self.cfg)
    history, _ = trainer.fit_phases(
        model, cfg, self.num_classes, x, validation_data,
        tf.distribute.get_strategy(), lambda: list(callbacks or []),
        class_weight=self.class_weight,
        steps_per_epoch=self.steps_per_epoch, verbose=2,
        class_counts=self.class_counts)
    scores = [v for v in history.get(OBJECTIVE, []) if v is not None]
    return {OBJECTIVE: max(scores) if scores else 0.0}


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
  cfg = dict(fn_args.custom_config)
  labels = preprocessing.read_labels(fn_args.train_files)
  counts = preprocessing.label_counts(fn_args.train_files, len(labels))
  seed = int(cfg['seed'])
  balanced = cfg.get('imbalance') == 'balanced_sampling'
  with_metadata = registry.uses_metadata(cfg['model'])
  batch_size = int(cfg['batch_size'])
  train_ds = trainer.make_dataset(
      fn_args.train_files, int(cfg['image_size']), batch_size, training=True,
      seed=seed, with_metadata=with_metadata,
      cache=bool(cfg.get('cache_images', True)),
      balanced_classes=len(labels) if balanced else 0)
  eval_ds = trainer.make_dataset(
      fn_args.eval_files, int(cfg['image_size']), batch_size, training=False,
      seed=seed, with_metadata=with_metadata,
      cache=bool(cfg.get('cache_images', True)))
  steps = int(cfg.get('steps_per_epoch') or 0) or None
  if balanced and steps is None:
    steps = trainer.epoch_steps(counts, batch_size)
  hypermodel = SkinLesionHyperModel(
      cfg, len(labels), trainer.imbalance_weights(cfg, counts), steps, counts)
  tuner = kt.RandomSearch(
      hypermodel, objective=kt.Objective(OBJECTIVE, direction='max'),
      max_trials=max(1, int(cfg.get('tuner_trials', 1))), seed=seed,
      directory=fn_args.working_dir, project_name='skinlesion_tuning',
      overwrite=True)
  return TunerFnResult(tuner=tuner, fit_kwargs={
      'x': train_ds, 'validation_data': eval_ds})
