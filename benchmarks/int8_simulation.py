"""How closely the quantized path simulates the int8 file (issue 16).

Quantization-aware training (models/quantization_aware.py) trains the
quantized path, a float simulation of the int8 .tflite; what it gains on the
real file is bounded by how faithful that simulation is.  For a trained
model this

1. rebuilds the run's Keras model from its ``history.json`` config with the
   SavedModel's variables (benchmarks/int8_qat.py), puts its kernels on the
   int8 grid (``round_kernels``) and builds its paths, calibrated on the
   converter's own calibration images, as the converter sees them;
2. exports the kernel-rounded model and converts it to int8 as
   MobileExporter does (same images; head bias correction off, so that
   the file is the converter's arithmetic alone);
3. scores on ``--split`` (eval by default): the top-1 agreement of the
   file, of the simulation, and of the two with each other (95% lesion-
   bootstrap intervals), and, on ``--tensor-images`` images, each simulated
   int8 tensor against the file's tensor of the same op (mean absolute
   difference in steps of its scale, and the mean magnitude in steps).

A model with metadata is simulated from its metadata-vector part
(registry.metadata_vector_model), the part the .tflite files hold.

  PYTHONPATH=. .venv/bin/python benchmarks/int8_simulation.py \\
      --run RUNS/pipelines/skin-lesion-tfx --trainer-id 8 --examples-id 1 \\
      --out benchmarks/results/int8_simulation.json
"""

import json
import os
import re
import sys
import tempfile

import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
  sys.path.insert(0, PROJECT_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from benchmarks import int8_error  # pylint: disable=g-import-not-at-top
from benchmarks import int8_qat  # pylint: disable=g-import-not-at-top
from mobile_export import data  # pylint: disable=g-import-not-at-top
from mobile_export import tflite  # pylint: disable=g-import-not-at-top
from models import export  # pylint: disable=g-import-not-at-top
from models import quantization_aware  # pylint: disable=g-import-not-at-top
from models import registry  # pylint: disable=g-import-not-at-top


def _inputs(pixels, vectors):
  images = pixels.astype(np.float32) / 255.0
  return images if vectors is None else [images, vectors.astype(np.float32)]


def file_tensors(buffer: bytes, pixels, vectors, layers):
  """({layer name: dequantized int8 output [N, ...]}, {layer name: scale})
  of the file's ops, each named by the Keras layer (of ``layers``) that its
  output tensor's first name is scoped under (the last such op in execution
  order: the layer's output)."""
  interpreter = tf.lite.Interpreter(model_content=buffer,
                                    experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  details = interpreter.get_tensor_details()
  by_layer = {}
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    for index in op['outputs']:
      tensor = details[index]
      scopes = [re.sub(r'_\d+$', '', part) for part in
                tensor['name'].split(';')[0].split('/')[:-1]]
      scopes = [part for part in scopes if part in layers]
      params = tensor['quantization_parameters']
      if (scopes and tensor['dtype'] == np.int8 and
          len(params['scales']) == 1):
        by_layer[scopes[-1]] = (index, float(params['scales'][0]),
                                int(params['zero_points'][0]))
  outputs = {index: (name, scale, zero)
             for name, (index, scale, zero) in by_layer.items()}
  values = {name: [] for name in by_layer}
  for i in range(len(pixels)):
    for detail in interpreter.get_input_details():
      if len(detail['shape']) == 4:
        interpreter.set_tensor(detail['index'], pixels[i:i + 1])
      else:
        interpreter.set_tensor(detail['index'],
                               vectors[i:i + 1].astype(detail['dtype']))
    interpreter.invoke()
    for index, (name, scale, zero) in outputs.items():
      values[name].append(
          (interpreter.get_tensor(index)[0].astype(np.float32) - zero) *
          scale)
  scales = {name: scale for name, scale, _ in outputs.values()}
  return {name: np.stack(v) for name, v in values.items()}, scales


def main(argv=None):
  parser = int8_qat.run_arguments(__doc__.split('\n')[0])
  parser.add_argument('--tensor-images', type=int, default=16)
  args = parser.parse_args(argv)

  saved_model, examples, cfg = int8_qat.run_paths(
      args.run, args.trainer_id, args.examples_id)
  image_size, seed = int(cfg['image_size']), int(cfg['seed'])
  (class_names, pixels, truth, lesions, with_metadata, vectors,
   _) = int8_error.load_split(saved_model, examples, args.split, image_size)
  train = int8_error.split_files(examples, 'train')
  cal_images = data.representative_images(train, image_size, args.calibration,
                                          seed)
  cal_meta = (data.representative_metadata(train, args.calibration, seed)
              if with_metadata else None)

  model = int8_qat.load_trained_model(saved_model, cfg, len(class_names))
  rounded = quantization_aware.round_kernels(model)
  numeric = (registry.metadata_vector_model(model) if with_metadata
             else model)
  paths = quantization_aware.Paths(numeric)
  # The converter's calibration images, as it sees them (calibrate).
  cal_x = np.stack(tflite._with_full_pixel_range(cal_images))  # pylint: disable=protected-access
  cal_inputs = ((cal_x, np.stack(cal_meta).astype(np.float32))
                if with_metadata else cal_x)
  paths.calibrate(tf.data.Dataset.from_tensor_slices(
      (cal_inputs, np.zeros(len(cal_x)))).batch(int(cfg['batch_size'])))
  with tempfile.TemporaryDirectory() as work:
    export.export_serving_model(model, work, image_size,
                                with_metadata=with_metadata)
    buffer = tflite.convert_int8(work, cal_images,
                                 representative_metadata=cal_meta,
                                 bias_correction=False)
  inputs = _inputs(pixels, vectors)
  float_path = paths.float_path.predict(inputs, batch_size=64, verbose=0)
  simulated = paths.quantized_path.predict(inputs, batch_size=64, verbose=0)
  on_device = tflite.predict(buffer, pixels, vectors)
  results = {
      'file_vs_float': int8_qat._score(  # pylint: disable=protected-access
          'file_vs_float', float_path, on_device, truth, class_names,
          lesions, {}),
      'simulation_vs_float': int8_qat._score(  # pylint: disable=protected-access
          'simulation_vs_float', float_path, simulated, truth, class_names,
          lesions, {}),
      'file_vs_simulation': int8_qat._score(  # pylint: disable=protected-access
          'file_vs_simulation', simulated, on_device, truth, class_names,
          lesions, {})}

  count = args.tensor_images
  few = (pixels[:count], None if vectors is None else vectors[:count])
  taps = keras.Model(paths.quantized_path.inputs,
                     [fake.output for fake in paths.fake_quants])
  sim_values = taps.predict(_inputs(*few), verbose=0)
  sim_values = sim_values if isinstance(sim_values, list) else [sim_values]
  names = [fake.name[:-len('_fake_quant')] for fake in paths.fake_quants]
  values, scales = file_tensors(buffer, *few, set(names))
  tensors = []
  for layer, sim in zip(names, sim_values):
    row = {'tensor': layer}
    if layer in values and values[layer].shape == sim.shape:
      scale = scales[layer]
      row.update(mean_abs_diff_steps=float(np.mean(
          np.abs(values[layer] - sim)) / scale),
                 mean_abs_steps=float(np.mean(np.abs(sim)) / scale),
                 scale=scale)
    tensors.append(row)
    print(json.dumps(row), flush=True)
  report = {'saved_model': saved_model, 'split': args.split,
            'images': int(len(pixels)), 'metadata_input': with_metadata,
            'calibration_images': args.calibration,
            'rounded_convolutions': rounded,
            'float_layers': list(paths.float_layers),
            'shared_ranges': {paths.fake_quants[k].name:
                              [paths.fake_quants[v].name for v in vs]
                              for k, vs in paths.shared_ranges.items()},
            'results': results, 'tensor_images': count, 'tensors': tensors}
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
