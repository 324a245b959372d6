"""GPU training throughput: fp32 vs mixed precision vs mixed precision + XLA.

Trains the documented real-data configuration (configs.REAL_DATA_PRESET;
MobileNetV2 with backbone weights from --weights, or random with
--weights none) for a fixed number of steps in each mode, through the
Trainer's own model building and compile (trainer.build_model /
compile_model: same dtype policy choice, float32 output layer, jit_compile)
on synthetic batches already on the device, so the number is the model's
training speed, not the input pipeline's.  Records images/s (after the
warm-up steps, which include tracing / XLA compilation) and the GPU
utilisation and memory that `nvidia-smi` samples during the timed steps.

  python benchmarks/gpu_training.py --steps 200 --warmup 20 \
      --weights ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5 \
      --out benchmarks/results/gpu_training.json

Without a GPU, --dry-run runs the same code for a few steps on the CPU
(fp32 only: the Trainer never turns mixed precision on without a GPU), to
check the script itself.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from models import trainer  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top

MODES = {
    'fp32': {'mixed_precision': False, 'jit_compile': False},
    'mixed_precision': {'mixed_precision': True, 'jit_compile': False},
    'mixed_precision_xla': {'mixed_precision': True, 'jit_compile': True},
}


class GpuSampler:
  """nvidia-smi utilisation / memory samples, every 0.5 s, in a thread."""

  def __init__(self):
    self.samples = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      try:
        out = subprocess.run(
            ['nvidia-smi', '--query-gpu=utilization.gpu,memory.used',
             '--format=csv,noheader,nounits'], capture_output=True,
            text=True, timeout=5, check=True).stdout
        util, mem = out.strip().splitlines()[0].split(',')
        self.samples.append((float(util), float(mem)))
      except (OSError, subprocess.SubprocessError, ValueError):
        pass
      self._stop.wait(0.5)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def summary(self):
    if not self.samples:
      return {'gpu_util_mean': None, 'gpu_util_max': None,
              'gpu_memory_mib_max': None, 'samples': 0}
    util = [s[0] for s in self.samples]
    return {'gpu_util_mean': round(float(np.mean(util)), 1),
            'gpu_util_max': max(util),
            'gpu_memory_mib_max': max(s[1] for s in self.samples),
            'samples': len(self.samples)}


def run_mode(name: str, cfg: dict, steps: int, warmup: int,
             num_classes: int = 7) -> dict:
  cfg = {**cfg, **MODES[name]}
  policy = trainer.precision_policy(cfg['mixed_precision'])
  strategy = trainer.distribution_strategy({})
  with strategy.scope():
    model = trainer.build_model(cfg, num_classes, False, policy)
    trainer.registry.set_trainable(model, int(cfg['fine_tune_layers']))
    trainer.compile_model(model, cfg, num_classes,
                          float(cfg['fine_tune_learning_rate']))
  size, batch = int(cfg['image_size']), int(cfg['batch_size'])
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch, size, size, 3), np.float32))
  y = tf.constant(rng.integers(0, num_classes, batch))
  ds = tf.data.Dataset.from_tensors((x, y)).repeat()
  model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
  with GpuSampler() as sampler:
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
  return {'mode': name, 'dtype_policy': policy,
          'jit_compile': cfg['jit_compile'], 'steps': steps,
          'batch_size': batch, 'image_size': size,
          'seconds': round(seconds, 2),
          'images_per_s': round(steps * batch / seconds, 1),
          **sampler.summary()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--weights', default='none')
  parser.add_argument('--batch-size', type=int, default=0)
  parser.add_argument('--dry-run', action='store_true',
                      help='CPU check: fp32, a few steps')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  settings = dict(configs.REAL_DATA_PRESET, weights=args.weights)
  if args.batch_size:
    settings['batch_size'] = args.batch_size
  cfg = configs.Settings(**settings).trainer_config()
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus and not args.dry_run:
    sys.exit('no GPU visible to TensorFlow; --dry-run checks the script on '
             'the CPU')
  modes = ['fp32'] if args.dry_run else list(MODES)
  steps, warmup = (3, 1) if args.dry_run else (args.steps, args.warmup)
  device = (tf.config.experimental.get_device_details(gpus[0])
            if gpus else {'device_name': 'CPU (dry run)'})
  results = {'device': {k: str(v) for k, v in device.items()},
             'gpus': len(gpus), 'model': cfg['model'],
             'runs': [run_mode(m, cfg, steps, warmup) for m in modes]}
  base = results['runs'][0]['images_per_s']
  for run in results['runs']:
    run['speedup_vs_fp32'] = round(run['images_per_s'] / base, 2)
  print(json.dumps(results, indent=2))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
