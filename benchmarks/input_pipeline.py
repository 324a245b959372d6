"""Input pipeline: the Trainer's tf.data input vs Keras ImageDataGenerator.

Both read the same real images (the first ``--images`` of an ingested train
split; the ImageDataGenerator side reads the original JPEGs through a
class-folder tree of symlinks in a temporary directory), at the same size,
with the same batch size and R5's augmentation, one full pass each,
alternating, in one process:

* project (what the Trainer runs): ``trainer.make_dataset`` (GZIP TFRecords
  -> parallel parse + JPEG decode + bilinear resize, decoded once into the
  in-memory cache, shuffle, batch, prefetch) followed by the models' fused
  augmentation (models/augmentation.FusedAugment, R5's settings,
  training=True: one affine warp + colour jitter per batch), mapped in
  tf.data; the cache-filling first pass is timed apart;
* the old path, for the record: no cache, the chain of Keras 3 layers
  (augmentation.layers(), one resample each);
* R5: ``tf_keras.preprocessing.image.ImageDataGenerator(rescale=1/255,
  rotation_range=10, width_shift_range=0.02, height_shift_range=0.02,
  zoom_range=0.05, horizontal_flip=True, brightness_range=(0.9, 1.1))
  .flow_from_directory(target_size=(S, S), batch_size=32)`` (Keras 3 has no
  ImageDataGenerator; tf_keras is Keras 2).

  .venv/bin/python benchmarks/input_pipeline.py \
      --examples /tmp/ham_home/pipelines/skin-lesion-tfx/ImageExampleGen/examples/1 \
      --data ../shared/data/ham10000 --images 2000 --image-size 224 \
      --out benchmarks/results/input_pipeline.json
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from models import augmentation  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from models import trainer  # pylint: disable=g-import-not-at-top


def first_records(examples_dir: str, n: int, out_dir: str):
  """The first n train records as one GZIP TFRecord file; their ids/labels."""
  src = [os.path.join(examples_dir, 'Split-train', '*')]
  labels = preprocessing.read_labels(src)
  path = os.path.join(out_dir, 'Split-train', 'data.gz')
  os.makedirs(os.path.dirname(path))
  with open(os.path.join(out_dir, features.LABELS_FILE), 'w') as f:
    f.write('\n'.join(labels) + '\n')
  spec = {features.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
          features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  ids = []
  with tf.io.TFRecordWriter(path, options='GZIP') as writer:
    for record in preprocessing.read_examples(src).take(n):
      writer.write(record.numpy())
      ex = tf.io.parse_single_example(record, spec)
      ids.append((ex[features.IMAGE_ID_KEY].numpy().decode(),
                  labels[int(ex[features.LABEL_KEY])]))
  return path, ids


def symlink_tree(data_root: str, ids, out_dir: str) -> str:
  jpegs = {}
  for folder, _, files in os.walk(data_root):
    for name in files:
      if name.endswith('.jpg'):
        jpegs[name[:-4]] = os.path.join(folder, name)
  for image_id, label in ids:
    os.makedirs(os.path.join(out_dir, label), exist_ok=True)
    os.symlink(jpegs[image_id], os.path.join(out_dir, label,
                                             image_id + '.jpg'))
  return out_dir


def project_dataset(path: str, image_size: int, batch_size: int,
                    cache: bool, fused: bool = True) -> tf.data.Dataset:
  """make_dataset + augmentation: the fused layer, or the old Keras chain."""
  layers = ([augmentation.fused(**augmentation.R5, seed=42)] if fused
            else augmentation.layers(**augmentation.R5, seed=42))

  def augment(x, y):
    for layer in layers:
      x = layer(x, training=True)
    return x, y
  return trainer.make_dataset([path], image_size, batch_size, training=True,
                              seed=42, cache=cache).map(
                                  augment, num_parallel_calls=tf.data.AUTOTUNE)


def timed_pass(batches) -> tuple:
  start = time.perf_counter()
  n = 0
  for x, _ in batches:
    n += int(x.shape[0])
  return n, time.perf_counter() - start


def r5_iterator(tree: str, image_size: int, batch_size: int):
  import tf_keras  # pylint: disable=g-import-not-at-top
  gen = tf_keras.preprocessing.image.ImageDataGenerator(
      rescale=1.0 / 255, rotation_range=10, width_shift_range=0.02,
      height_shift_range=0.02, zoom_range=0.05, horizontal_flip=True,
      brightness_range=(0.9, 1.1))
  return gen.flow_from_directory(tree, target_size=(image_size, image_size),
                                 batch_size=batch_size, class_mode='sparse',
                                 seed=42)


def r5_pass(it) -> tuple:
  return timed_pass(next(it) for _ in range(len(it)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True)
  parser.add_argument('--data', required=True)
  parser.add_argument('--images', type=int, default=2000)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix='input_pipeline_')
  path, ids = first_records(args.examples, args.images,
                            os.path.join(work, 'examples'))
  tree = symlink_tree(args.data, ids, os.path.join(work, 'tree'))
  # The Trainer's path: decoded once into the in-memory cache (the first,
  # filling pass is timed apart), then one fused warp + colour jitter.
  project = project_dataset(path, args.image_size, args.batch_size, True)
  chain = project_dataset(path, args.image_size, args.batch_size, False,
                          fused=False)
  r5 = r5_iterator(tree, args.image_size, args.batch_size)
  # Warm-up (tf.data function tracing, file system caches): one batch each.
  next(iter(chain))
  next(r5)
  r5.reset()
  fill = timed_pass(project)
  runs = {'project_fused_cached': [], 'r5_image_data_generator': [],
          'project_keras_chain_uncached': [],
          'project_fused_cache_fill': [
              {'images': fill[0], 'seconds': round(fill[1], 2),
               'images_per_s': round(fill[0] / fill[1], 1)}]}
  print('project_fused_cache_fill', runs['project_fused_cache_fill'])
  for _ in range(args.repeats):
    for name, fn in (('project_fused_cached', lambda: timed_pass(project)),
                     ('r5_image_data_generator', lambda: r5_pass(r5)),
                     ('project_keras_chain_uncached',
                      lambda: timed_pass(chain))):
      n, seconds = fn()
      runs[name].append({'images': n, 'seconds': round(seconds, 2),
                         'images_per_s': round(n / seconds, 1)})
      print(name, runs[name][-1], flush=True)
  best = {k: max(r['images_per_s'] for r in v) for k, v in runs.items()}
  r5_best = best['r5_image_data_generator']
  result = {'images': len(ids), 'image_size': args.image_size,
            'batch_size': args.batch_size, 'cpus': os.cpu_count(),
            'load_average': os.getloadavg(),
            'runs': runs, 'best_images_per_s': best,
            'ratio': round(best['project_fused_cached'] / r5_best, 2),
            'ratio_keras_chain': round(
                best['project_keras_chain_uncached'] / r5_best, 2),
            'ratio_first_epoch': round(
                best['project_fused_cache_fill'] / r5_best, 2)}
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
