"""Where does int8 error grow? (issue 16, step 1) on a real-data SavedModel.

For an existing ExportArchive SavedModel (raw-image signature) and its
ExampleGen TFRecords (calibration from train, every choice on eval; test only
when asked for the final number):

* the QuantizationDebugger with *whole-model* verify (each quantized op fed
  by the previous quantized op, so error accumulates as on the device): per
  layer the RMSE of (dequantized - float) in units of that layer's output
  scale, and the Pearson correlation of quantized with float activations;
* variants converted from the same calibration data, each scored against the
  SavedModel (top-1 agreement, balanced-accuracy drop, 95% lesion-bootstrap
  intervals from mobile_export/parity.py):
    - ``dynamic_range``: int8 weights, float activations (weight error only);
    - ``int8``: the converter's full-integer model (uint8 in, float out);
    - ``int8_float_head``: the same, the head (every FULLY_CONNECTED and
      the SOFTMAX) left in float -- the single uint8 image input kept
      (tflite.FLOAT_HEAD_OPS, the converter's default until the hidden
      Dense layers went int8: benchmarks/int8_head.py); ``_mean``,
      ``_depthwise``, ``_conv2d``: those ops in float too;
    - ``int8_stratified``: full integer, calibration stratified by class;
    - ``int8_float_head_bias_corrected``: the float-head model with its
      head's bias corrected on the calibration images
      (tflite.correct_head_bias: each class's mean log-probability ratio to
      the SavedModel);
    - ``int8_float_head_top{k}_nodes`` (and ``_bias_corrected``): the k
      nodes of largest whole-model-verify error (RMSE / scale) kept in
      float as well (``--float-nodes``);
    - ``float16``: the pipeline's float16 file, as a reference;
    - ``weights_only_int8``: not a .tflite: the SavedModel itself with each
      convolution kernel rounded to per-channel int8 (weights_only_int8),
      the weights' share of the error (``dynamic_range`` quantizes the
      activations on the fly too);
* agreement binned by the float model's top-1 margin (p1 - p2).

  PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/int8_error.py \\
      --saved-model RUNS/Trainer/model/61/Format-Serving \\
      --examples RUNS/ImageExampleGen/examples/40 --image-size 128 \\
      --split eval --out benchmarks/results/int8_error.json
"""

import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
  sys.path.insert(0, PROJECT_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from mobile_export import data  # pylint: disable=g-import-not-at-top
from mobile_export import parity  # pylint: disable=g-import-not-at-top
from mobile_export import tflite  # pylint: disable=g-import-not-at-top
from models import int8_weights  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top

MARGIN_BINS = (0.0, 0.05, 0.1, 0.2, 0.4, 1.01)


def split_files(examples_dir, split):
  return sorted(glob.glob(os.path.join(examples_dir, f'Split-{split}', '*')))


def load_split(saved_model_dir, examples_dir, split, image_size):
  """One split of an Examples artifact and the SavedModel's probabilities
  on it: (class names, uint8 pixels, labels, lesion ids, whether the model
  takes metadata, the encoded metadata vectors or None, probabilities).

  A model with metadata: the SavedModel reads the raw metadata, the .tflite
  files its encoding (as MobileExporter does).
  """
  with open(os.path.join(examples_dir, 'labels.txt'), encoding='utf-8') as f:
    class_names = f.read().split()
  files = split_files(examples_dir, split)
  pixels, truth = data.load_images(files, image_size)
  with_metadata = tflite.takes_metadata(saved_model_dir)
  raw = data.load_metadata(files) if with_metadata else None
  vectors = data.encode_metadata(raw) if with_metadata else None
  reference = parity.saved_model_predict(saved_model_dir, pixels,
                                         metadata=raw)
  return (class_names, pixels, truth, data.lesion_ids(files), with_metadata,
          vectors, reference)


def calibration_sample(train_files, image_size, count, seed, with_metadata):
  """MobileExporter's calibration sample of the train split: (float32
  images in [0, 1], their encoded metadata vectors or None)."""
  images = data.representative_images(train_files, image_size, count, seed)
  vectors = (data.representative_metadata(train_files, count, seed)
             if with_metadata else None)
  return images, vectors


def stratified_images(files, image_size, count, seed):
  """``count`` train images, as equal per class as the classes allow."""
  pixels, labels = data.load_images(files, image_size)
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  per_class = int(np.ceil(count / len(classes)))
  chosen = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    chosen.extend(rng.choice(idx, min(per_class, len(idx)), replace=False))
  rng.shuffle(chosen)
  chosen = chosen[:count]
  return [preprocessing.to_model_input(pixels[i]).numpy() for i in chosen]


def dynamic_range(saved_model_dir):
  converter = tflite.converter(saved_model_dir)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


# Which loaded kernels are depthwise: Keras 3 calls both kernels ``kernel``,
# so the layer name tells (keras.applications' MobileNetV2 says
# ``depthwise``, models/efficientnet_lite.py ``dwconv``).
DEPTHWISE_LAYER = re.compile(r'depthwise|dwconv')


def weights_only_int8(saved_model_dir, pixels_float, vectors):
  """The SavedModel with every convolution kernel rounded to per-channel
  int8 (models/int8_weights.py) and everything else float (activations,
  head): the error of the weights alone.  TFLite's dynamic-range model is
  not that: its hybrid kernels quantize the activations too, on the fly."""
  loaded = tf.saved_model.load(saved_model_dir)
  rounded = 0
  for variable in loaded.variables:
    name = variable.name
    if variable.shape.rank != 4 or not name.endswith('kernel:0'):
      continue
    variable.assign(int8_weights.per_channel_int8(
        variable.numpy(), depthwise=bool(DEPTHWISE_LAYER.search(name))))
    rounded += 1
  probabilities = tflite.signature_probabilities(
      loaded, tflite.signature_key(saved_model_dir), pixels_float, vectors)
  return probabilities, rounded


def float32(saved_model_dir):
  return tflite.converter(saved_model_dir).convert()


def layer_errors(debug_model, float_model, images):
  """Whole-model-verify statistics per quantized layer."""
  options = tf.lite.experimental.QuantizationDebugOptions(
      layer_debug_metrics={
          'mean_abs_error': lambda diff: float(np.mean(np.abs(diff)))})
  debugger = tf.lite.experimental.QuantizationDebugger(
      quant_debug_model_content=debug_model,
      float_model_content=float_model,
      debug_dataset=lambda: ([x[None]] for x in images),
      debug_options=options)
  debugger.run()
  with tempfile.NamedTemporaryFile('w+', suffix='.csv') as f:
    debugger.layer_statistics_dump(f)
    f.flush()
    f.seek(0)
    import csv  # pylint: disable=g-import-not-at-top
    rows = list(csv.DictReader(f))
  out = []
  for row in rows:
    scale = float(row['scale'])
    rmse = float(row['mean_squared_error']) ** 0.5
    out.append({'op': row['op_name'], 'tensor': row['tensor_name'],
                'scale': scale, 'rmse_over_scale': rmse / scale if scale else None,
                'mean_error': float(row['mean_error']),
                'mean_abs_error': float(row['mean_abs_error'])})
  return out


def activation_correlation(quant_model, float_model, pixels, limit=16):
  """Pearson correlation of every int8 tensor (dequantized) with the float
  model's tensor of the same name, over ``limit`` uint8 images [S, S, 3]
  (each model gets them as an app would: tflite.model_input)."""
  def tensors(buffer, image):
    it = tf.lite.Interpreter(model_content=buffer,
                             experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp['index'], tflite.model_input(image[None], inp['dtype']))
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
      try:
        v = it.get_tensor(d['index'])
      except ValueError:
        continue
      scale, zp = d['quantization']
      if d['dtype'] in (np.int8, np.uint8, np.int32) and scale:
        v = (v.astype(np.float32) - zp) * scale
      out[d['name']] = np.asarray(v, np.float32)
    return out
  pairs = {}
  for image in pixels[:limit]:
    q, f = tensors(quant_model, image), tensors(float_model, image)
    for name, qv in q.items():
      if name in f and f[name].shape == qv.shape and qv.size > 1:
        pairs.setdefault(name, [[], []])
        pairs[name][0].append(f[name].ravel())
        pairs[name][1].append(qv.ravel())
  result = {}
  for name, (fs, qs) in pairs.items():
    fv, qv = np.concatenate(fs), np.concatenate(qs)
    if fv.std() > 0 and qv.std() > 0:
      result[name] = float(np.corrcoef(fv, qv)[0, 1])
  return result


def margin_bins(reference, candidate):
  top2 = np.sort(reference, axis=1)[:, -2:]
  margin = top2[:, 1] - top2[:, 0]
  agree = reference.argmax(1) == candidate.argmax(1)
  rows = []
  for lo, hi in zip(MARGIN_BINS[:-1], MARGIN_BINS[1:]):
    m = (margin >= lo) & (margin < hi)
    rows.append({'margin': f'[{lo:.2f}, {min(hi, 1.0):.2f})',
                 'images': int(m.sum()),
                 'agreement': float(agree[m].mean()) if m.any() else None})
  return rows


def ties(probabilities):
  """Images whose top two probabilities are exactly equal."""
  top2 = np.sort(probabilities, axis=1)[:, -2:]
  return int(np.sum(top2[:, 1] == top2[:, 0]))


def add_model_split_args(parser):
  """The arguments of the int8 benchmarks that score one SavedModel's int8
  files on one split, calibrated as MobileExporter calibrates them."""
  parser.add_argument('--saved-model', required=True)
  parser.add_argument('--examples', required=True)
  parser.add_argument('--image-size', type=int, required=True)
  parser.add_argument('--split', default='eval',
                      help='the split scored (choose on eval; test once)')
  parser.add_argument('--calibration', type=int, default=200,
                      help='train images for the activation ranges '
                           '(MobileExporter: 200)')
  parser.add_argument('--seed', type=int, default=42,
                      help='calibration sample seed (MobileExporter: 42)')
  parser.add_argument('--out', required=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_model_split_args(parser)
  parser.add_argument('--debug-images', type=int, default=50)
  parser.add_argument('--max-drop', type=float, default=0.08)
  parser.add_argument('--float-nodes', type=int, nargs='*',
                      default=[5, 10, 20],
                      help='variants keeping the k nodes of largest '
                           'whole-model-verify error in float')
  args = parser.parse_args()
  start = time.time()

  (class_names, pixels, truth, lesions, with_metadata, vectors,
   reference) = load_split(args.saved_model, args.examples, args.split,
                           args.image_size)
  thresholds = parity.Thresholds(0.98, args.max_drop)

  train = split_files(args.examples, 'train')
  random_cal, cal_vectors = calibration_sample(
      train, args.image_size, args.calibration, args.seed, with_metadata)
  calibrated = tflite.calibrate(args.saved_model, random_cal, cal_vectors)
  float_model = float32(args.saved_model)
  head = list(tflite.FLOAT_HEAD_OPS)
  cal_pixels = tflite.as_pixels(random_cal)
  cal_reference = tflite.reference_probabilities(args.saved_model, random_cal,
                                                 cal_vectors)
  cal_vector_array = (None if cal_vectors is None else np.stack(cal_vectors))
  float_head = tflite.quantize_calibrated(calibrated, head)
  bias_corrected, bias_shift = tflite.correct_head_bias(
      float_head, cal_reference, cal_pixels, cal_vector_array)
  variants = {
      'float32': float_model,
      'float16': tflite.convert_float16(args.saved_model),
      'dynamic_range': dynamic_range(args.saved_model),
      'int8': tflite.quantize_calibrated(calibrated),
      'int8_float_softmax': tflite.quantize_calibrated(calibrated,
                                                       ['SOFTMAX']),
      'int8_float_head': float_head,
      'int8_float_head_mean': tflite.quantize_calibrated(
          calibrated, head + ['MEAN']),
      'int8_float_head_depthwise': tflite.quantize_calibrated(
          calibrated, head + ['DEPTHWISE_CONV_2D']),
      'int8_float_head_conv2d': tflite.quantize_calibrated(
          calibrated, head + ['MEAN', 'CONV_2D']),
      'int8_float_head_bias_corrected': bias_corrected,
  }
  layers, ranked, correlation = [], [], {}
  if not with_metadata:
    # (The debugger and the per-node sweep read one image input.)
    strat_calibrated = tflite.calibrate(
        args.saved_model, stratified_images(train, args.image_size,
                                            args.calibration, args.seed))
    variants['int8_stratified'] = tflite.quantize_calibrated(strat_calibrated)
    variants['int8_float_head_stratified'] = tflite.quantize_calibrated(
        strat_calibrated, head)
    # Whole-model verify: its ranking picks the nodes kept in float.
    layers = layer_errors(tflite.quantize_calibrated(calibrated, debug=True),
                          float_model, random_cal[:args.debug_images])
    ranked = [l['tensor'] for l in sorted(
        (l for l in layers if l['rmse_over_scale'] is not None),
        key=lambda l: -l['rmse_over_scale'])]
    for k in args.float_nodes:
      name = f'int8_float_head_top{k}_nodes'
      variants[name] = tflite.quantize_calibrated(calibrated, head,
                                                  float_nodes=ranked[:k])
      variants[name + '_bias_corrected'] = tflite.correct_head_bias(
          variants[name], cal_reference, cal_pixels)[0]
    correlation = activation_correlation(variants['int8'], float_model,
                                         cal_pixels[:args.debug_images])
  scored = {name: (len(buffer), tflite.predict(buffer, pixels, vectors))
            for name, buffer in variants.items()}
  weights_only, rounded = weights_only_int8(
      args.saved_model, pixels.astype(np.float32) / 255.0, vectors)
  scored['weights_only_int8'] = (None, weights_only)
  results = {}
  for name, (size, probs) in scored.items():
    r = parity.compare(name, reference, probs, truth, class_names, thresholds,
                       lesions)
    results[name] = {
        'bytes': size,
        'top1_agreement': r.top1_agreement_interval,
        'balanced_accuracy_drop': r.balanced_accuracy_drop_interval,
        'exact_top1_ties': ties(probs),
        'predicted_counts': np.bincount(probs.argmax(1),
                                        minlength=len(class_names)).tolist(),
        'agreement_by_margin': margin_bins(reference, probs),
        # What is left once the weights are rounded: agreement with the
        # weights-only model (the activations' share).
        'agreement_with_weights_only': float(np.mean(
            probs.argmax(1) == weights_only.argmax(1))),
    }
    print(name, json.dumps({k: results[name][k] for k in
                            ('top1_agreement', 'balanced_accuracy_drop',
                             'exact_top1_ties')}), flush=True)

  report = {
      'saved_model': args.saved_model, 'split': args.split,
      'metadata_input': with_metadata,
      'images': int(len(pixels)), 'lesions': int(len(np.unique(lesions))),
      'reference_predicted_counts': np.bincount(
          reference.argmax(1), minlength=len(class_names)).tolist(),
      'reference_exact_top1_ties': ties(reference),
      'calibration': {'split': 'train', 'images': args.calibration,
                      'seed': args.seed},
      'head_bias_shift': bias_shift.tolist(),
      'weights_only_int8_kernels_rounded': rounded,
      'float_nodes_ranked': ranked[:max(args.float_nodes, default=0)],
      'variants': results, 'layers_whole_model_verify': layers,
      'activation_correlation': correlation,
      'seconds': round(time.time() - start, 1)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  worst = sorted((l for l in layers if l['rmse_over_scale'] is not None),
                 key=lambda l: -l['rmse_over_scale'])[:8]
  for l in worst:
    print(f"{l['op']:24s} rmse/scale {l['rmse_over_scale']:8.3f} "
          f"{l['tensor'][:60]}")
  print('lowest correlations:', sorted(correlation.items(),
                                       key=lambda kv: kv[1])[:6])
  print('seconds', report['seconds'])


if __name__ == '__main__':
  main()
