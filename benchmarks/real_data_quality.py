"""Real-data quality: train registry models on HAM10000, score one split.

Uses the project's own ingestion output (``skinlesion ingest``: lesion-
disjoint train / eval / test splits by lesion_id hash) and the Trainer's
``run_fn`` itself (the same code the pipeline runs), then scores the exported
``serving_default`` signature on one split (``--split``): balanced accuracy,
accuracy, macro F1, per-class recall (melanoma first), wall time, and the
split's ECE / NLL with the Trainer's temperature scaling and without it.
A model with metadata is also scored through its image-only signature
(``image_only``: every metadata value missing, as its image_only_* .tflite
files).  Each run is also scored with flips / dihedral test-time augmentation
applied after training (``tta_after_training``) and on recoloured copies of
the split (``colour_probes``: white balance and saturation, COLOUR_PROBES),
and each trained run against the pipeline's subgroup gates on the split
(``subgroup_gates``: benchmarks/gates_on_split.py, with the run's gate
settings); ``--probe SERVING_DIR:IMAGE_SIZE`` scores an already trained model that way
without training.  Choosing between configurations is done on ``--split
eval`` (the default); ``--split test`` is for the one final score of the
chosen configuration.

  skinlesion ingest --data ../shared/data/ham10000 --out /tmp/ham_home
  nice -n 10 .venv/bin/python benchmarks/real_data_quality.py \
      --examples /tmp/ham_home/pipelines/skin-lesion-tfx/ImageExampleGen/examples/1 \
      --out benchmarks/results/real_data_quality.json \
      --run cnn_baseline:'{"width": 1.0}' \
      --run mobilenet_v2:'{"weights": "../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"}'

Each ``--run MODEL:JSON`` starts from ``configs.REAL_DATA_PRESET`` and the
JSON overrides; results are appended to ``--out`` after every model, so a
partial run keeps what finished.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top

from benchmarks import gates_on_split  # pylint: disable=g-import-not-at-top
from components import predictions as predictions_lib  # pylint: disable=g-import-not-at-top
from models import augmentation  # pylint: disable=g-import-not-at-top
from models import calibration  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from models import trainer  # pylint: disable=g-import-not-at-top
from models import tta as tta_views  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top


def predict_split(serving_dir: str, files):
  """(labels [N], probabilities [N, K], lesion ids [N]) of the examples
  signature on these TFRecords (components/predictions.py: an image without
  a lesion id is its own lesion)."""
  scored = predictions_lib.predict_split(tf.saved_model.load(serving_dir),
                                         files)
  return scored.labels, scored.probabilities, np.array(scored.lesion_ids)


def score(serving_dir: str, files, labels,
          scored: predictions_lib.Predictions = None) -> dict:
  """The model's metrics on these TFRecords; ``scored``: its predictions
  on them when already made (predictions.predict_split)."""
  if scored is None:
    y_true, probabilities, _ = predict_split(serving_dir, files)
  else:
    y_true, probabilities = scored.labels, scored.probabilities
  y_pred = probabilities.argmax(axis=1)
  # Calibration on the scored split, with the Trainer's temperature (folded
  # into the model when applied) and without it: softmax(log p * T) undoes
  # the fold exactly.
  fit = calibration.read(serving_dir)
  temperature = float(fit.get('temperature', 1.0))
  offsets = calibration.prior_offsets(fit)
  if offsets:  # softmax(log q - c) undoes the prior correction first.
    probabilities_before_prior = calibration.corrected(
        probabilities, 1.0, -np.asarray(offsets))
  else:
    probabilities_before_prior = probabilities
  uncalibrated = calibration.scale(probabilities_before_prior,
                                   1.0 / temperature)
  bins = configs.CALIBRATION_BINS
  return {
      'examples': int(len(y_true)),
      **decision_metrics(y_true, probabilities, labels),
      'confusion': skm.confusion_matrix(
          y_true, y_pred, labels=range(len(labels))).tolist(),
      'calibration_fit': fit,
      'ece': calibration.expected_calibration_error(
          probabilities, y_true, bins),
      'ece_without_temperature': calibration.expected_calibration_error(
          uncalibrated, y_true, bins),
      'nll': float(skm.log_loss(y_true, probabilities,
                                     labels=range(len(labels)))),
      'nll_without_temperature': float(skm.log_loss(
          y_true, uncalibrated, labels=range(len(labels)))),
  }


def decision_metrics(y_true, probabilities, labels) -> dict:
  """Balanced accuracy, accuracy, macro F1 and per-class recall (melanoma
  first) of the top-1 decisions."""
  y_pred = probabilities.argmax(axis=1)
  recall = skm.recall_score(y_true, y_pred, labels=range(len(labels)),
                            average=None, zero_division=0)
  order = sorted(range(len(labels)),
                 key=lambda i: (labels[i] != configs.MELANOMA_LABEL, i))
  return {
      'balanced_accuracy': float(skm.balanced_accuracy_score(y_true, y_pred)),
      'accuracy': float(skm.accuracy_score(y_true, y_pred)),
      'macro_f1': float(skm.f1_score(y_true, y_pred, average='macro')),
      'recall': {labels[i]: float(recall[i]) for i in order},
  }


def _image_batches(serving_dir: str, files, image_size: int):
  """(predict, labels, inputs) per batch of 32: the single-view image
  signature (plus the raw metadata of a model that takes it) and its
  inputs, images float32 [N, S, S, 3] in [0, 1] under 'images'."""
  model = tf.saved_model.load(serving_dir)
  names = set(model.signatures)
  signature = model.signatures[features.single_view_image_signature(names)]
  with_metadata = features.METADATA_VECTOR_SIGNATURE in names
  spec = {**preprocessing.image_label_spec(),
          **(preprocessing.metadata_spec() if with_metadata else {})}
  predict = lambda inputs: signature(**inputs)[features.PREDICTION_KEY]
  for batch in preprocessing.read_examples(files).batch(32):
    parsed = tf.io.parse_example(batch, spec)
    inputs = {'images': preprocessing.decode_batch(parsed[features.IMAGE_KEY],
                                                   image_size)}
    if with_metadata:
      inputs.update({key: parsed[key]
                     for key in preprocessing.metadata_spec()})
    yield predict, parsed[features.LABEL_KEY].numpy(), inputs


def tta_probabilities(serving_dir: str, files, image_size: int, modes):
  """(labels [N], {mode: probabilities [N, K]}): the single-view image
  signature averaged over each mode's views (what ``tta=<mode>`` puts inside
  the exported signatures), for a model trained and exported without it."""
  y_true, by_mode = [], {mode: [] for mode in modes}
  for predict, labels, inputs in _image_batches(serving_dir, files,
                                                image_size):
    y_true.extend(labels)
    for mode in modes:
      by_mode[mode].append(
          tta_views.average(predict, inputs, mode, image_key='images').numpy())
  return np.array(y_true), {mode: np.concatenate(chunks)
                            for mode, chunks in by_mode.items()}


# Another camera's colours, applied to the decoded [0, 1] images: white
# balance as per-channel gains (R, G, B), saturation as a blend with the
# luma (ITU-R BT.601 weights).  Not a re-acquisition: a probe of how much
# the decisions move when only the colours do.
COLOUR_PROBES = {
    'warm_white_balance': ('gains', (1.2, 1.0, 0.8)),
    'cool_white_balance': ('gains', (0.8, 1.0, 1.2)),
    'desaturated': ('saturation', 0.5),
    'oversaturated': ('saturation', 1.5),
}


def recolour(images: tf.Tensor, probe: str) -> tf.Tensor:
  kind, value = COLOUR_PROBES[probe]
  if kind == 'gains':
    return tf.clip_by_value(images * tf.constant(value, tf.float32), 0.0, 1.0)
  return augmentation.saturate(images, value)


def colour_probe_probabilities(serving_dir: str, files, image_size: int,
                               probes=tuple(COLOUR_PROBES)):
  """(labels [N], {probe: probabilities [N, K]}) of the single view on each
  recoloured copy of the split."""
  y_true, by_probe = [], {probe: [] for probe in probes}
  for predict, batch_labels, inputs in _image_batches(serving_dir, files,
                                                      image_size):
    y_true.extend(batch_labels)
    for probe in probes:
      by_probe[probe].append(predict(
          {**inputs, 'images': recolour(inputs['images'], probe)}).numpy())
  return np.array(y_true), {probe: np.concatenate(chunks)
                            for probe, chunks in by_probe.items()}


def score_colour_probes(serving_dir: str, files, labels, image_size: int,
                        probes=tuple(COLOUR_PROBES)) -> dict:
  """decision_metrics on each recoloured copy of the split (what another
  acquisition's colours do to the same model)."""
  y_true, by_probe = colour_probe_probabilities(serving_dir, files,
                                                image_size, probes)
  return {probe: decision_metrics(y_true, probabilities, labels)
          for probe, probabilities in by_probe.items()}


def score_image_only(serving_dir: str, files, labels, image_size: int):
  """decision_metrics of a model with metadata through its image-only
  signature (every metadata value missing: what its image_only_* .tflite
  files compute); None for a model without one."""
  model = tf.saved_model.load(serving_dir)
  if features.IMAGE_ONLY_SIGNATURE not in model.signatures:
    return None
  signature = model.signatures[features.IMAGE_ONLY_SIGNATURE]
  y_true, probabilities = [], []
  for batch in preprocessing.read_examples(files).batch(32):
    parsed = tf.io.parse_example(batch, preprocessing.image_label_spec())
    images = preprocessing.decode_batch(parsed[features.IMAGE_KEY],
                                        image_size)
    probabilities.append(
        signature(images=images)[features.PREDICTION_KEY].numpy())
    y_true.extend(parsed[features.LABEL_KEY].numpy())
  return decision_metrics(np.array(y_true), np.concatenate(probabilities),
                          labels)


def score_tta(serving_dir: str, files, labels, image_size: int,
              modes=('flips', 'dihedral')) -> dict:
  """decision_metrics with test-time augmentation applied after training."""
  y_true, by_mode = tta_probabilities(serving_dir, files, image_size, modes)
  return {mode: decision_metrics(y_true, probabilities, labels)
          for mode, probabilities in by_mode.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True,
                      help='an ImageExampleGen Examples artifact folder')
  parser.add_argument('--out', required=True)
  parser.add_argument('--run', action='append', default=[],
                      help='MODEL:JSON overrides of REAL_DATA_PRESET')
  parser.add_argument('--probe', action='append', default=[],
                      metavar='SERVING_DIR:IMAGE_SIZE',
                      help='score an already trained model (no training): '
                           'the split as it is and its colour probes')
  parser.add_argument('--split', default='eval', choices=('eval', 'test'),
                      help='the split scored (choose on eval; test once)')
  parser.add_argument('--work', default='',
                      help='keep the trained models here (default: a temp dir)')
  parser.add_argument('--no-tta', action='store_true',
                      help='skip scoring flips / dihedral TTA after training')
  args = parser.parse_args()
  split = lambda name: [os.path.join(args.examples, f'Split-{name}', '*')]
  labels = preprocessing.read_labels(split('train'))
  results = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  if not args.run and not args.probe:
    parser.error('give at least one --run or --probe')
  for probe in args.probe:
    serving, _, size = probe.rpartition(':')
    result = {'serving_dir': serving, 'split': args.split,
              **score(serving, split(args.split), labels),
              'image_only': score_image_only(serving, split(args.split),
                                             labels, int(size)),
              'colour_probes': score_colour_probes(
                  serving, split(args.split), labels, int(size))}
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ('confusion',)}), flush=True)
    results.append(result)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
  work = args.work or tempfile.mkdtemp(prefix='real_data_quality_')
  for run in args.run:
    name, _, overrides = run.partition(':')
    settings = dict(configs.REAL_DATA_PRESET)
    settings.update({'model': name, **json.loads(overrides or '{}')})
    cfg = configs.Settings(**settings).trainer_config()
    out = os.path.join(work, f'{name}-{int(time.time())}')
    fn_args = FnArgs(train_files=split('train'), eval_files=split('eval'),
                     serving_model_dir=os.path.join(out, 'serving'),
                     model_run_dir=os.path.join(out, 'run'), custom_config=cfg)
    start = time.time()
    trainer.run_fn(fn_args)
    train_s = time.time() - start
    with open(os.path.join(out, 'run', trainer.HISTORY_FILE)) as f:
      history = json.load(f)
    result = {'model': name, 'overrides': json.loads(overrides or '{}'),
              'serving_dir': fn_args.serving_model_dir,
              'config': cfg, 'train_wall_s': round(train_s, 1),
              'epochs_run': len(history['history']['loss']),
              'phases': history['phases'],
              'train_counts': history['train_counts'],
              'split': args.split}
    # One prediction of the split for the metrics and the gates.
    scored = predictions_lib.predict_split(
        tf.saved_model.load(fn_args.serving_model_dir), split(args.split))
    result.update(score(fn_args.serving_model_dir, split(args.split), labels,
                        scored))
    if cfg.get('tta', 'none') == 'none' and not args.no_tta:
      result['tta_after_training'] = score_tta(
          fn_args.serving_model_dir, split(args.split), labels,
          cfg['image_size'])
    result['image_only'] = score_image_only(
        fn_args.serving_model_dir, split(args.split), labels,
        cfg['image_size'])
    result['colour_probes'] = score_colour_probes(
        fn_args.serving_model_dir, split(args.split), labels,
        cfg['image_size'])
    # The run's subgroup gates on this split: a candidate that fails them
    # on eval would be refused on test (BENCHMARKS.md, "EfficientNet-Lite0
    # at 160 px").
    result['subgroup_gates'] = gates_on_split.summary(
        gates_on_split.gates_on_split(fn_args.serving_model_dir,
                                      args.examples, args.split,
                                      configs.Settings(**settings), scored))
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ('config', 'confusion', 'phases')}),
          flush=True)
    results.append(result)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
