"""Does refitting the int8 file's float head on its own int8 features close
the activations' share of the int8 error? (issue 16, a measurement)

The int8 file keeps its classifier head (the last FULLY_CONNECTED and the
softmax) in float.  The head bias correction (``tflite.correct_head_bias``)
moves only the head's bias; this refits the head's weights and bias too,
so that softmax(W f_q + b), with f_q the features the int8 body hands the
head, matches the SavedModel's probabilities on train images: a
distillation of the float model's decisions into the head of the int8
file, with a ridge penalty pulling W towards its trained value.  Nothing
the app sees changes (same inputs, same ops, same size).

Scored on ``--split`` (eval by default: choose on eval, never on test)
against the SavedModel, with the parity gate's lesion-bootstrap intervals:

  PYTHONPATH=. .venv/bin/python benchmarks/int8_head_refit.py \\
      --saved-model <run>/Trainer/model/<id>/Format-Serving \\
      --examples <run>/ImageExampleGen/examples/<id> --image-size 128 \\
      --out int8_head_refit.json
"""

import argparse
import json
import os
import sys
import time
from typing import Optional, Tuple

import numpy as np
from scipy import optimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top

from benchmarks import int8_error  # pylint: disable=g-import-not-at-top
from mobile_export import parity  # pylint: disable=g-import-not-at-top
from mobile_export import tflite  # pylint: disable=g-import-not-at-top


def head_features(buffer: bytes, pixels: np.ndarray,
                  metadata: Optional[np.ndarray] = None) -> np.ndarray:
  """The float features [N, D] the int8 body hands the float head."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
  feature_index = int(tflite.head_op(model).inputs[0])
  interpreter = tf.lite.Interpreter(model_content=buffer, num_threads=1,
                                    experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  image, vector = tflite.input_tensors(buffer)
  out = []
  for i, x in enumerate(pixels):
    interpreter.set_tensor(image['index'],
                           tflite.model_input(x[None], image['dtype']))
    if vector is not None:
      interpreter.set_tensor(vector['index'],
                             np.asarray(metadata[i:i + 1], np.float32))
    interpreter.invoke()
    out.append(np.array(interpreter.get_tensor(feature_index),
                        np.float64).reshape(-1))
  return np.stack(out)


def head_weights(buffer: bytes) -> Tuple[np.ndarray, np.ndarray]:
  """(W [C, D], b [C]) of the float head, float64 copies."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
  head = tflite.head_op(model)
  subgraph = model.subgraphs[0]
  weights = subgraph.tensors[head.inputs[1]]
  w = model.buffers[weights.buffer].data.view(np.float32).reshape(
      [int(d) for d in weights.shape])
  return (w.astype(np.float64),
          tflite.head_bias(model, create=True).astype(np.float64))


def with_head(buffer: bytes, w: np.ndarray, b: np.ndarray) -> bytes:
  """The flatbuffer with the head's weights and bias replaced."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
  head = tflite.head_op(model)
  subgraph = model.subgraphs[0]
  weights = subgraph.tensors[head.inputs[1]]
  view = model.buffers[weights.buffer].data.view(np.float32)
  view[:] = np.asarray(w, np.float32).reshape(-1)
  tflite.head_bias(model, create=True)[:] = np.asarray(b, np.float32)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def fit_head(features: np.ndarray, reference: np.ndarray, w0: np.ndarray,
             b0: np.ndarray, l2: float) -> Tuple[np.ndarray, np.ndarray, dict]:
  """W, b minimising the cross-entropy of softmax(f W^T + b) against the
  reference probabilities, plus l2 * ||W - W0||^2 (per example); L-BFGS."""
  n, d = features.shape
  c = reference.shape[1]
  target = np.clip(reference, 1e-7, 1.0)
  target = target / target.sum(axis=1, keepdims=True)

  def unpack(theta):
    return theta[:c * d].reshape(c, d), theta[c * d:]

  def loss(theta):
    w, b = unpack(theta)
    z = features @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    value = -np.sum(target * log_p) / n + l2 * np.sum((w - w0) ** 2)
    g = (np.exp(log_p) - target) / n
    grad_w = g.T @ features + 2 * l2 * (w - w0)
    return value, np.concatenate([grad_w.reshape(-1), g.sum(axis=0)])

  theta0 = np.concatenate([w0.reshape(-1), b0])
  before, _ = loss(theta0)
  result = optimize.minimize(loss, theta0, jac=True, method='L-BFGS-B',
                             options={'maxiter': 500})
  w, b = unpack(result.x)
  return w, b, {'loss_before': float(before), 'loss_after': float(result.fun),
                'iterations': int(result.nit),
                'relative_change': float(np.linalg.norm(w - w0) /
                                         max(np.linalg.norm(w0), 1e-12))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  int8_error.add_model_split_args(parser)
  parser.add_argument('--fit-images', type=int, nargs='*',
                      default=[200, 1000],
                      help='train images the head is refitted on')
  parser.add_argument('--l2', type=float, nargs='*', default=[1e-3, 1e-2])
  args = parser.parse_args(argv)
  start = time.time()

  (class_names, pixels, truth, lesions, with_metadata, vectors,
   reference) = int8_error.load_split(args.saved_model, args.examples,
                                      args.split, args.image_size)
  thresholds = parity.Thresholds(0.98, 0.01)

  train = int8_error.split_files(args.examples, 'train')

  def sample(count, seed):
    return int8_error.calibration_sample(train, args.image_size, count, seed,
                                         with_metadata)

  cal_images, cal_meta = sample(args.calibration, args.seed)
  calibrated = tflite.calibrate(args.saved_model, cal_images, cal_meta)
  float_head = tflite.quantize_calibrated(calibrated,
                                          tflite.FLOAT_HEAD_OPS)
  cal_reference = tflite.reference_probabilities(args.saved_model, cal_images,
                                                 cal_meta)
  bias_corrected, _ = tflite.correct_head_bias(
      float_head, cal_reference, tflite.as_pixels(cal_images),
      None if cal_meta is None else np.stack(cal_meta))
  variants = {'int8_float_head': float_head,
              'int8_float_head_bias_corrected': bias_corrected}
  fits = {}
  w0, b0 = head_weights(float_head)
  for count in args.fit_images:
    # A different seed from the calibration sample unless they coincide in
    # size (then the same images: what the pipeline already holds).
    images, meta = ((cal_images, cal_meta) if count == args.calibration
                    else sample(count, args.seed + 1))
    ref = tflite.reference_probabilities(args.saved_model, images, meta)
    feats = head_features(float_head, tflite.as_pixels(images),
                          None if meta is None else np.stack(meta))
    for l2 in args.l2:
      w, b, info = fit_head(feats, ref, w0, b0, l2)
      name = f'int8_head_refit_{count}_l2_{l2:g}'
      variants[name] = with_head(float_head, w, b)
      fits[name] = {'fit_images': count, 'l2': l2, **info}
      print(name, json.dumps(fits[name]), flush=True)

  results = {}
  for name, buffer in variants.items():
    probs = tflite.predict(buffer, pixels, vectors)
    r = parity.compare(name, reference, probs, truth, class_names, thresholds,
                       lesions)
    results[name] = {'bytes': len(buffer),
                     'top1_agreement': r.top1_agreement_interval,
                     'balanced_accuracy_drop':
                         r.balanced_accuracy_drop_interval,
                     **fits.get(name, {})}
    print(name, json.dumps({k: results[name][k] for k in
                            ('top1_agreement', 'balanced_accuracy_drop')}),
          flush=True)
  report = {'saved_model': args.saved_model, 'split': args.split,
            'metadata_input': with_metadata, 'images': int(len(pixels)),
            'lesions': int(len(np.unique(lesions))),
            'calibration_images': args.calibration, 'seed': args.seed,
            'variants': results, 'seconds': round(time.time() - start, 1)}
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
