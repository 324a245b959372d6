"""The Trainer's int8 phases on an already trained model (issue 16).

A real-data Trainer run takes 12-25 minutes here; this runs only its last
phase on the model a run exported, ``--phase int8_qat``
(``quantization_aware.fit``, models/quantization_aware.py) or
``--phase int8_weights`` (models/int8_weights.py, entered as a run with it
enters it: the fine-tune phase's trainable layers and learning rate, the
run's class weights and early stopping), and scores what it changes, side
by side in one process:

1. rebuilds the run's Keras model from its ``history.json`` config and loads
   the SavedModel's variables into it by name;
2. converts the SavedModel as it is to int8 (the baseline file);
3. runs the phase (train split; eval split for its validation metrics),
   exports the new SavedModel and converts it to float16 and int8 (200
   train images for calibration, seeded with the run's seed, as
   MobileExporter; the phase calibrates on the same images);
4. on ``--split`` (eval by default: every choice here is on eval): each
   file's top-1 agreement with its own SavedModel and balanced-accuracy drop
   (95% lesion-bootstrap intervals, mobile_export/parity.py) and the new
   SavedModel against the old one.

The temperature the run fitted stays folded into the head (the phase runs
before the Trainer's calibration; here the calibration is not refitted).

  PYTHONPATH=. .venv/bin/python benchmarks/int8_qat.py \\
      --run RUNS/pipelines/skin-lesion-tfx --trainer-id 8 --examples-id 1 \\
      --epochs 2 --phase int8_qat --out benchmarks/results/int8_qat.json
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
  sys.path.insert(0, PROJECT_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from benchmarks import int8_error  # pylint: disable=g-import-not-at-top
from mobile_export import data  # pylint: disable=g-import-not-at-top
from mobile_export import parity  # pylint: disable=g-import-not-at-top
from mobile_export import tflite  # pylint: disable=g-import-not-at-top
from models import export  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from models import quantization_aware  # pylint: disable=g-import-not-at-top
from models import registry  # pylint: disable=g-import-not-at-top
from models import trainer  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top


def run_paths(run: str, trainer_id: str, examples_id: str):
  """(SavedModel folder, Examples folder, the Trainer's config) of one
  Trainer run in a pipeline root laid out as TFX lays it out."""
  with open(os.path.join(run, 'Trainer', 'model_run', trainer_id,
                         trainer.HISTORY_FILE), encoding='utf-8') as f:
    cfg = json.load(f)['config']
  return (os.path.join(run, 'Trainer', 'model', trainer_id, 'Format-Serving'),
          os.path.join(run, 'ImageExampleGen', 'examples', examples_id), cfg)


def load_trained_model(saved_model_dir: str, cfg: dict,
                       num_classes: int) -> keras.Model:
  """The run's model (registry, from its config) with the SavedModel's
  weights, matched by name (the random generators' states are not weights
  and are left); every weight must be there."""
  model = trainer.build_model({**cfg, 'weights': 'none'}, num_classes, False,
                              'float32')
  saved = {v.name: v for v in tf.saved_model.load(saved_model_dir).variables}
  missing = [w.path for w in model.weights
             if w.path + ':0' not in saved or
             tuple(saved[w.path + ':0'].shape) != tuple(w.shape)]
  if missing:
    raise ValueError(f'the SavedModel does not hold this model: '
                     f'{len(missing)} of its {len(model.weights)} weights are '
                     f'missing or of another shape, e.g. {missing[:5]}')
  for weight in model.weights:
    weight.assign(saved[weight.path + ':0'].numpy())
  return model


def int8_weights_phase(model: keras.Model, cfg: dict, num_classes: int,
                       train_files, datasets, epochs: int):
  """trainer's int8_weights phase on ``model`` as fit_phases runs it after
  the run's last phase: that phase's trainable layers and learning rate,
  the run's class weights, fresh early stopping.  (per-epoch history,
  phase details)."""
  fine_tuned = int(cfg.get('fine_tune_epochs', 0)) > 0 and any(
      layer.name == registry.BACKBONE_LAYER for layer in model.layers)
  if fine_tuned:
    registry.set_trainable(model, int(cfg['fine_tune_layers']))
  counts = preprocessing.label_counts(train_files, num_classes)
  phase_cfg = {**cfg, 'epochs': 0, 'fine_tune_epochs': 0,
               'int8_qat_epochs': 0, 'int8_weight_epochs': epochs,
               'learning_rate': float(cfg['fine_tune_learning_rate'] if
                                      fine_tuned else cfg['learning_rate'])}
  history, boundaries = trainer.fit_phases(
      model, phase_cfg, num_classes, datasets['train'], datasets['eval'],
      tf.distribute.get_strategy(),
      lambda: trainer.phase_callbacks(phase_cfg),
      class_weight=trainer.imbalance_weights(phase_cfg, counts),
      class_counts=counts)
  (boundary,) = boundaries
  return history, boundary


def _score(name, reference, candidate, truth, class_names, lesions, extra):
  r = parity.compare(name, reference, candidate, truth, class_names,
                     parity.Thresholds(0.98, 0.01), lesions)
  out = {'top1_agreement': r.top1_agreement_interval,
         'balanced_accuracy_drop': r.balanced_accuracy_drop_interval,
         'balanced_accuracy': r.metrics.balanced_accuracy,
         'accuracy': r.metrics.accuracy, **extra}
  print(name, json.dumps(out), flush=True)
  return out


def run_arguments(description: str) -> argparse.ArgumentParser:
  """A parser with the arguments that name one run (run_paths), the split
  scored and the calibration count."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--run', required=True,
                      help='a pipeline root: <home>/pipelines/<name>')
  parser.add_argument('--trainer-id', required=True)
  parser.add_argument('--examples-id', required=True)
  parser.add_argument('--split', default='eval')
  parser.add_argument('--calibration', type=int,
                      default=configs.Settings.tflite_representative_examples)
  parser.add_argument('--out', required=True)
  return parser


def main(argv=None):
  parser = run_arguments(__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=2)
  parser.add_argument('--phase', default=trainer.INT8_QAT_PHASE,
                      choices=[trainer.INT8_QAT_PHASE,
                               trainer.INT8_WEIGHTS_PHASE])
  parser.add_argument('--learning-rate', type=float,
                      default=configs.Settings.int8_qat_learning_rate)
  parser.add_argument('--consistency', type=float,
                      default=configs.Settings.int8_qat_consistency)
  args = parser.parse_args(argv)
  start = time.time()

  saved_model, examples, cfg = run_paths(args.run, args.trainer_id,
                                         args.examples_id)
  image_size, seed = int(cfg['image_size']), int(cfg['seed'])
  (class_names, pixels, truth, lesions, with_metadata, vectors,
   reference) = int8_error.load_split(saved_model, examples, args.split,
                                      image_size)
  train = int8_error.split_files(examples, 'train')
  cal_images = data.representative_images(train, image_size, args.calibration,
                                          seed)
  cal_meta = (data.representative_metadata(train, args.calibration, seed)
              if with_metadata else None)
  results = {}
  before = tflite.convert_int8(saved_model, cal_images,
                               representative_metadata=cal_meta)
  results['int8_before'] = _score(
      'int8_before', reference, tflite.predict(before, pixels, vectors),
      truth, class_names, lesions, {'bytes': len(before)})

  keras.utils.set_random_seed(seed)
  model = load_trained_model(saved_model, cfg, len(class_names))
  files = {split: int8_error.split_files(examples, split)
           for split in ('train', 'eval')}
  datasets = {split: trainer.make_dataset(
      files[split], image_size, int(cfg['batch_size']),
      training=split == 'train', seed=seed,
      with_metadata=with_metadata) for split in files}
  phase_start = time.time()
  if args.phase == trainer.INT8_QAT_PHASE:
    fitted, details = quantization_aware.fit(
        model, datasets['train'], datasets['eval'],
        tf.distribute.get_strategy(), args.learning_rate, args.consistency,
        trainer.calibration_dataset(
            files['train'], image_size, int(cfg['batch_size']),
            args.calibration, seed, with_metadata),
        0, args.epochs)
    history = fitted.history
  else:
    history, details = int8_weights_phase(
        model, cfg, len(class_names), files['train'], datasets, args.epochs)
  phase_s = time.time() - phase_start

  with tempfile.TemporaryDirectory() as work:
    after_dir = os.path.join(work, 'serving')
    export.export_serving_model(model, after_dir, image_size,
                                with_metadata=with_metadata,
                                tta=cfg.get('tta', 'none'))
    after = parity.saved_model_predict(
        after_dir, pixels,
        metadata=data.load_metadata(int8_error.split_files(
            examples, args.split)) if with_metadata else None)
    results['saved_model_after_vs_before'] = _score(
        'saved_model_after_vs_before', reference, after, truth, class_names,
        lesions, {})
    float16 = tflite.convert_float16(after_dir)
    results['float16_after'] = _score(
        'float16_after', after, tflite.predict(float16, pixels, vectors),
        truth, class_names, lesions, {'bytes': len(float16)})
    int8 = tflite.convert_int8(after_dir, cal_images,
                               representative_metadata=cal_meta)
    on_device = tflite.predict(int8, pixels, vectors)
    results['int8_after'] = _score('int8_after', after, on_device, truth,
                                   class_names, lesions, {'bytes': len(int8)})

  report = {
      'saved_model': saved_model, 'split': args.split,
      'metadata_input': with_metadata, 'images': int(len(pixels)),
      'lesions': int(len(np.unique(lesions))), 'model': cfg['model'],
      'phase_name': args.phase, 'epochs': args.epochs,
      'learning_rate': details.get('learning_rate', args.learning_rate),
      'calibration_images': args.calibration,
      'phase_seconds': round(phase_s, 1),
      'phase': {**details, 'history': {
          k: [float(v) for v in vs] for k, vs in history.items()}},
      'saved_model_before': dataclasses.asdict(parity.classification_metrics(
          reference, truth, class_names)),
      'results': results, 'seconds': round(time.time() - start, 1)}
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
