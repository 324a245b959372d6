"""Mobile export benchmark (issue 6): size, latency, parity on real data.

For each model (``cnn_baseline`` from the registry; MobileNetV2 with the
offline ImageNet weights and a head trained here), trained briefly on the
real HAM10000 images of ``../shared/data/ham10000`` with a lesion-disjoint
split, it exports the SavedModel with ``models/export.py`` and converts it
with ``mobile_export/`` exactly as the pipeline does (float16; int8 calibrated
on a seeded sample of the train split), then measures:

* file size: the SavedModel directory, its float32 weights, and each .tflite
  (with metadata);
* per-image latency (batch 1) of the SavedModel's ``serving_images``
  signature, and of each .tflite in ``tf.lite.Interpreter``, with 1 and 2
  threads: each thread count runs in its own process (TensorFlow fixes its
  thread pools at start-up); inside it every format runs on the same images
  in interleaved rounds, so machine load hits all formats alike; median and
  90th percentile over rounds;
* top-1 agreement with the SavedModel and balanced-accuracy drop of each
  .tflite on the real test split (``mobile_export/parity.py``), against the
  pipeline's default parity gate.

  PYTHONPATH=. .venv/bin/python benchmarks/mobile_export_benchmark.py \\
      --out benchmarks/results/mobile_export.json

Nothing is downloaded; the images are read from ../shared and not copied.
"""

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
  sys.path.insert(0, PROJECT_ROOT)
SHARED = os.path.join(os.path.dirname(PROJECT_ROOT), 'shared')
HAM10000 = os.path.join(SHARED, 'data', 'ham10000')
WEIGHTS = os.path.join(SHARED, 'weights')

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

SPLIT_BUCKETS = (('train', 14), ('eval', 3), ('test', 3))  # as the pipeline


@dataclasses.dataclass
class ModelSpec:
  name: str
  image_size: int
  description: str
  # > 0: continue from the previous model, fine-tuning the backbone's top
  # layers (BatchNorm stays in inference mode) for `finetune_epochs`.
  finetune_layers: int = 0
  finetune_epochs: int = 0


MODELS = (
    ModelSpec('cnn_baseline', 64,
              'cnn_baseline (registry), width 0.5, 64 px, trained from '
              'scratch'),
    ModelSpec('mobilenet_v2', 128,
              'MobileNetV2 alpha 0.35, 128 px, ImageNet weights (frozen) + '
              'a softmax head trained here'),
    ModelSpec('mobilenet_v2_finetuned', 128,
              'the mobilenet_v2 above, then its top 30 backbone layers '
              'fine-tuned for 2 epochs', finetune_layers=30,
              finetune_epochs=2),
)


def lesion_split(lesion_id: str) -> str:
  """Lesion-disjoint split: sha256 of lesion_id into 20 buckets (14/3/3)."""
  bucket = int(hashlib.sha256(lesion_id.encode()).hexdigest(), 16) % 20
  for split, size in SPLIT_BUCKETS:
    if bucket < size:
      return split
    bucket -= size
  raise AssertionError(bucket)


def read_metadata(labels) -> Dict[str, List[Tuple[str, int]]]:
  """split -> [(image path, label id)], lesion-disjoint."""
  out = {split: [] for split, _ in SPLIT_BUCKETS}
  with open(os.path.join(HAM10000, 'HAM10000_metadata.csv')) as f:
    for row in csv.DictReader(f):
      path = os.path.join(HAM10000, 'images', row['image_id'] + '.jpg')
      out[lesion_split(row['lesion_id'])].append(
          (path, labels.index(row['dx'])))
  return out


def load_pixels(items, image_size):
  """Canonical preprocessing of the files: uint8 [N, S, S, 3], labels [N]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from models import preprocessing  # pylint: disable=g-import-not-at-top
  paths = [p for p, _ in items]
  dataset = tf.data.Dataset.from_tensor_slices(paths).map(
      lambda p: preprocessing.decode_and_resize(tf.io.read_file(p),
                                                image_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(512)
  pixels = np.concatenate(list(dataset.as_numpy_iterator()))
  return pixels, np.array([y for _, y in items], np.int64)


def _scaled(pixels, labels=None, shuffle_seed=None, batch_size=64):
  """A tf.data pipeline of float32 [0, 1] batches from uint8 arrays."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices(
      pixels if labels is None else (pixels, labels))
  if shuffle_seed is not None:
    ds = ds.shuffle(len(pixels), seed=shuffle_seed)
  scale = lambda x: tf.cast(x, tf.float32) / 255.0
  ds = ds.batch(batch_size).map(
      scale if labels is None else (lambda x, y: (scale(x), y)))
  return ds.prefetch(tf.data.AUTOTUNE)


def build_and_train(spec: ModelSpec, data, labels, epochs: int, seed: int):
  """A trained Keras model taking float32 [N, S, S, 3] in [0, 1]."""
  import keras  # pylint: disable=g-import-not-at-top
  from models import metrics  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  from models import trainer  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  (x_train, y_train), (x_eval, y_eval) = data['train'], data['eval']
  counts = np.bincount(y_train, minlength=len(labels)).tolist()
  weights = trainer.class_weights(counts)
  if spec.name == 'cnn_baseline':
    model = registry.build('cnn_baseline', num_classes=len(labels),
                           image_size=spec.image_size, width=0.5)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss='sparse_categorical_crossentropy',
                  metrics=[metrics.BalancedAccuracy(len(labels))])
    model.fit(_scaled(x_train, y_train, shuffle_seed=seed),
              validation_data=_scaled(x_eval, y_eval),
              epochs=epochs, class_weight=weights, verbose=2,
              callbacks=[keras.callbacks.EarlyStopping(
                  monitor='val_balanced_accuracy', mode='max', patience=4,
                  restore_best_weights=True)])
    return model
  # MobileNetV2: the frozen backbone's pooled features are computed once,
  # the head is trained on them, then backbone and head are joined.
  size = spec.image_size
  backbone = keras.applications.MobileNetV2(
      input_shape=(size, size, 3), alpha=0.35, include_top=False,
      weights=None, pooling='avg')
  backbone.load_weights(os.path.join(
      WEIGHTS,
      'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5'))
  backbone.trainable = False
  inputs = keras.Input((size, size, 3), name='image')
  features = backbone(keras.layers.Rescaling(2.0, offset=-1.0)(inputs),
                      training=False)
  head = keras.Sequential([
      keras.layers.Dropout(0.2),
      keras.layers.Dense(len(labels), activation='softmax', dtype='float32',
                         name='probabilities')], name='head')
  model = keras.Model(inputs, head(features), name='mobilenet_v2')
  embed = keras.Model(inputs, features)
  f_train = embed.predict(_scaled(x_train), verbose=0)
  f_eval = embed.predict(_scaled(x_eval), verbose=0)
  head_in = keras.Input(f_train.shape[1:])
  head_model = keras.Model(head_in, head(head_in))
  head_model.compile(optimizer=keras.optimizers.Adam(1e-3),
                     loss='sparse_categorical_crossentropy',
                     metrics=[metrics.BalancedAccuracy(len(labels))])
  head_model.fit(f_train, y_train, validation_data=(f_eval, y_eval),
                 epochs=epochs * 8, batch_size=64, class_weight=weights,
                 verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping(
                     monitor='val_balanced_accuracy', mode='max',
                     patience=15, restore_best_weights=True)])
  return model


def finetune(spec: ModelSpec, model, data, labels, seed: int):
  """Unfreezes the backbone's top layers and trains the whole model."""
  import keras  # pylint: disable=g-import-not-at-top
  from models import metrics  # pylint: disable=g-import-not-at-top
  from models import trainer  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  (x_train, y_train), (x_eval, y_eval) = data['train'], data['eval']
  backbone = next(l for l in model.layers
                  if l.name.startswith('mobilenetv2'))
  backbone.trainable = True
  for layer in backbone.layers[:-spec.finetune_layers]:
    layer.trainable = False
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.trainable = False
  counts = np.bincount(y_train, minlength=len(labels)).tolist()
  model.compile(optimizer=keras.optimizers.Adam(1e-4),
                loss='sparse_categorical_crossentropy',
                metrics=[metrics.BalancedAccuracy(len(labels))])
  model.fit(_scaled(x_train, y_train, shuffle_seed=seed),
            validation_data=_scaled(x_eval, y_eval),
            epochs=spec.finetune_epochs,
            class_weight=trainer.class_weights(counts), verbose=2)
  return model


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def export_all(spec, model, out_dir, train_pixels, labels, seed,
               representative_examples):
  """SavedModel + float32 / float16 / int8 .tflite; returns their paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mobile_export import tflite  # pylint: disable=g-import-not-at-top
  from models import export  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  saved_model = os.path.join(out_dir, 'saved_model')
  export.export_serving_model(model, saved_model, spec.image_size)
  rng = np.random.default_rng(seed)
  sample = rng.choice(len(train_pixels), representative_examples,
                      replace=False)
  calibration = [train_pixels[i] / np.float32(255) for i in sample]
  files = {'saved_model': saved_model}
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model, signature_keys=['serving_images'])
  buffers = {'float32': converter.convert()}  # Reference only, not shipped.
  start = time.time()
  buffers['float16'] = tflite.convert(saved_model, tflite.FLOAT16)
  buffers['int8'] = tflite.convert(saved_model, tflite.INT8, calibration)
  print(f'{spec.name}: conversions took {time.time() - start:.1f} s',
        flush=True)
  for fmt, buffer in buffers.items():
    buffer = tflite.add_metadata(
        buffer, labels, name=spec.name, description='benchmark',
        version='0', author=configs.MODEL_AUTHOR,
        licenses=configs.MODEL_LICENSE)
    path = os.path.join(out_dir, f'model_{fmt}.tflite')
    with open(path, 'wb') as f:
      f.write(buffer)
    files[fmt] = path
  return files


def parity_numbers(files, pixels, truth, labels):
  from mobile_export import parity  # pylint: disable=g-import-not-at-top
  from mobile_export import tflite  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  settings = configs.Settings()
  gate = parity.Thresholds(settings.tflite_min_top1_agreement,
                           settings.tflite_max_balanced_accuracy_drop)
  reference = parity.saved_model_predict(files['saved_model'], pixels)
  out = {'saved_model': dataclasses.asdict(
      parity.classification_metrics(reference, truth, labels))}
  for fmt in ('float32', 'float16', 'int8'):
    with open(files[fmt], 'rb') as f:
      result = parity.compare(fmt, reference,
                              tflite.predict(f.read(), pixels), truth,
                              labels, gate)
    out[fmt] = result.to_dict()
  return out


def latency_worker(args) -> int:
  """Runs in a child: per-image latency of every format, `threads` threads."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from mobile_export import tflite  # pylint: disable=g-import-not-at-top
  from models import features  # pylint: disable=g-import-not-at-top
  with open(args.latency_job) as f:
    job = json.load(f)
  pixels = np.load(job['pixels'])
  images = pixels[:job['images']]
  runners = {}
  signature = tf.saved_model.load(job['files']['saved_model']).signatures[
      features.IMAGE_SIGNATURE]

  def run_saved_model(image):
    signature(images=tf.constant(image[None] / np.float32(255)))[
        features.PREDICTION_KEY].numpy()

  runners['saved_model'] = run_saved_model
  for fmt in ('float32', 'float16', 'int8'):
    interpreter = tf.lite.Interpreter(model_path=job['files'][fmt],
                                      num_threads=args.threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(image, interpreter=interpreter, inp=inp, out=out):
      interpreter.set_tensor(inp['index'],
                             tflite.model_input(image[None], inp['dtype']))
      interpreter.invoke()
      interpreter.get_tensor(out['index'])

    runners[fmt] = run
  for run in runners.values():  # Warm-up.
    for image in images[:job['warmup']]:
      run(image)
  per_round = {name: [] for name in runners}
  chunk = max(1, len(images) // job['rounds'])
  for r in range(job['rounds']):
    batch = images[r * chunk:(r + 1) * chunk]
    for name, run in runners.items():
      start = time.perf_counter()
      for image in batch:
        run(image)
      per_round[name].append((time.perf_counter() - start) / len(batch))
  result = {name: {'median_ms': 1000 * float(np.median(v)),
                   'p90_ms': 1000 * float(np.percentile(v, 90)),
                   'rounds': len(v), 'images_per_round': chunk}
            for name, v in per_round.items()}
  result['load_average'] = os.getloadavg()
  print(json.dumps(result))
  return 0


def measure_latency(files, pixels, threads, tmp, images, rounds):
  pixels_path = os.path.join(tmp, 'latency_pixels.npy')
  np.save(pixels_path, pixels[:images])
  job_path = os.path.join(tmp, 'latency_job.json')
  with open(job_path, 'w') as f:
    json.dump({'files': files, 'pixels': pixels_path, 'images': images,
               'warmup': 20, 'rounds': rounds}, f)
  done = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--latency-job', job_path,
       '--threads', str(threads)],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONPATH=PROJECT_ROOT))
  return json.loads(done.stdout.strip().splitlines()[-1])


def render_markdown(results) -> str:
  """The BENCHMARKS.md tables of a results JSON."""
  formats = ('saved_model', 'float32', 'float16', 'int8')
  names = {'saved_model': 'Keras SavedModel (float32)',
           'float32': 'float32 .tflite (reference, not shipped)',
           'float16': 'float16 .tflite', 'int8': 'int8 .tflite'}
  lines = []
  for model_name, e in results['models'].items():
    sizes = e['bytes']
    size = {'saved_model': sizes['saved_model_dir'], **{
        f: sizes[f] for f in ('float32', 'float16', 'int8')}}
    ref = e['parity_on_test']['saved_model']
    one, two = e['latency']['1_thread'], e['latency']['2_thread']
    lines += [
        f'### {model_name}: {e["description"]}',
        '',
        f'{e["parameters"]:,} parameters; test balanced accuracy of the '
        f'SavedModel {ref["balanced_accuracy"]:.4f}, accuracy '
        f'{ref["accuracy"]:.4f} ({ref["examples"]} images). SavedModel '
        f'directory {sizes["saved_model_dir"]:,} bytes, of which '
        f'variables/ {sizes["saved_model_variables"]:,}.',
        '',
        '| format | bytes | x SavedModel | latency 1 thread, ms (p90) | '
        'latency 2 threads, ms (p90) | speed-up vs SavedModel, 1 thread | '
        'top-1 agreement | BA drop (points) | parity gate |',
        '|---|---|---|---|---|---|---|---|---|']
    for f in formats:
      parity_row = e['parity_on_test'].get(f) if f != 'saved_model' else None
      agreement = (f'{parity_row["top1_agreement"]:.4f}' if parity_row
                   else '-')
      drop = (f'{100 * parity_row["balanced_accuracy_drop"]:+.2f}'
              if parity_row else '-')
      gate = ('-' if not parity_row or f == 'float32' else
              ('pass' if parity_row['passed'] else 'FAIL'))
      lines.append(
          f'| {names[f]} | {size[f]:,} | '
          f'{size[f] / size["saved_model"]:.2f} | '
          f'{one[f]["median_ms"]:.2f} ({one[f]["p90_ms"]:.2f}) | '
          f'{two[f]["median_ms"]:.2f} ({two[f]["p90_ms"]:.2f}) | '
          f'{one["saved_model"]["median_ms"] / one[f]["median_ms"]:.1f}x | '
          f'{agreement} | {drop} | {gate} |')
    lines += ['', f'Load average during the latency runs: 1 thread '
              f'{one["load_average"][0]:.2f}, 2 threads '
              f'{two["load_average"][0]:.2f} (on {results["cpu_count"]} '
              'cores).', '']
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(
      PROJECT_ROOT, 'benchmarks', 'results', 'mobile_export.json'))
  parser.add_argument('--epochs', type=int, default=6)
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--latency-images', type=int, default=200)
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--models', default=','.join(m.name for m in MODELS))
  parser.add_argument('--render', metavar='RESULTS_JSON',
                      help='print the markdown tables of a results file')
  parser.add_argument('--latency-job', help=argparse.SUPPRESS)
  parser.add_argument('--threads', type=int, default=1,
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.latency_job:
    return latency_worker(args)
  if args.render:
    with open(args.render) as f:
      print(render_markdown(json.load(f)))
    return 0
  if not os.path.exists(os.path.join(HAM10000, 'HAM10000_metadata.csv')):
    print(f'error: {HAM10000} is missing', file=sys.stderr)
    return 1

  from mobile_export import tflite  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  labels = list(configs.LABELS)
  settings = configs.Settings()
  started = time.time()
  items = read_metadata(labels)
  results = {'command': ' '.join([os.path.relpath(sys.argv[0], PROJECT_ROOT)]
                                 + sys.argv[1:]),
             'cpu_count': os.cpu_count(),
             'split_sizes': {k: len(v) for k, v in items.items()},
             'models': {}}
  wanted = args.models.split(',')
  loaded_size, data, model = None, None, None
  with tempfile.TemporaryDirectory() as tmp:
    for spec in MODELS:
      if spec.name not in wanted:
        continue
      if spec.finetune_layers and model is None:
        raise ValueError(f'{spec.name} continues from the model before it')
      t0 = time.time()
      if spec.image_size != loaded_size:
        data = {split: load_pixels(v, spec.image_size)
                for split, v in items.items()}
        loaded_size = spec.image_size
      if spec.finetune_layers:
        model = finetune(spec, model, data, labels, args.seed)
      else:
        model = build_and_train(spec, data, labels, args.epochs, args.seed)
      train_seconds = time.time() - t0
      out_dir = os.path.join(tmp, spec.name)
      files = export_all(spec, model, out_dir, data['train'][0], labels,
                         args.seed, settings.tflite_representative_examples)
      entry = {
          'description': spec.description,
          'image_size': spec.image_size,
          'parameters': int(model.count_params()),
          'load_and_train_seconds': round(train_seconds, 1),
          'bytes': {
              'saved_model_dir': dir_bytes(files['saved_model']),
              'saved_model_variables': dir_bytes(
                  os.path.join(files['saved_model'], 'variables')),
              **{fmt: os.path.getsize(files[fmt])
                 for fmt in ('float32', 'float16', 'int8')}},
          'parity_on_test': parity_numbers(files, *data['test'], labels),
          'latency': {},
      }
      for threads in (1, 2):
        entry['latency'][f'{threads}_thread'] = measure_latency(
            files, data['test'][0], threads, tmp, args.latency_images,
            args.rounds)
      results['models'][spec.name] = entry
      print(json.dumps({spec.name: entry}, indent=1), flush=True)
  results['total_seconds'] = round(time.time() - started, 1)
  results['tflite_formats_shipped'] = list(tflite.FORMATS)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  print(render_markdown(results))
  print(f'Wrote {args.out} in {results["total_seconds"]} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
