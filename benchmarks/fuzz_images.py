"""Fuzzes ingestion's image check with random and mutated JPEG / PNG bytes.

The path under test is the one ImageExampleGen runs on every image file:
``image_example_gen.ImageCheck`` (read, open with PIL, size limit, full
decode, RGB JPEG re-encoding).  For every input it must

* return, never raise (an exception would fail the whole ingestion);
* accept the image or quarantine it with one of the known reasons;
* finish within ``TIME_LIMIT_S`` (no hang);
* when it accepts, hand over an RGB JPEG that TensorFlow's decoder (the one
  training and serving use) decodes to the image's size: a file PIL accepts
  but TensorFlow cannot read would crash training later.

``make test`` runs a bounded form (tests/components/test_image_fuzz.py,
hypothesis, a few seconds).  The long form is this script:

  python benchmarks/fuzz_images.py --seconds 600 [--seed 0]

It prints the inputs tried, the verdict counts, the slowest input and any
failure (the failing input is saved next to the report, for a unit test).
"""

import argparse
import collections
import io
import os
import random
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

from components import image_example_gen as ieg  # pylint: disable=g-import-not-at-top

# Per-image time limit.  The largest image a seed can become is bounded by
# MAX_PIXELS; checking one takes well under 0.1 s here (2-core VM).
TIME_LIMIT_S = 2.0
MAX_PIXELS = 4_000_000


def seeds() -> Dict[str, bytes]:
  """Small valid images of every kind ingestion converts or keeps."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
  base = Image.fromarray(pixels)
  out = {}

  def save(name, image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    out[name] = buf.getvalue()

  save('jpeg_rgb', base, 'JPEG', quality=90)
  save('jpeg_progressive', base, 'JPEG', progressive=True)
  save('jpeg_gray', base.convert('L'), 'JPEG')
  save('jpeg_cmyk', base.convert('CMYK'), 'JPEG')
  save('png_rgb', base, 'PNG')
  save('png_rgba', base.convert('RGBA'), 'PNG')
  save('png_palette', base.convert('P'), 'PNG', transparency=0)
  save('png_gray16', Image.fromarray(
      (pixels[..., 0].astype(np.uint16) * 257)), 'PNG')
  save('png_interlaced', base, 'PNG', optimize=False)
  return out


Mutation = Callable[[random.Random, bytearray], None]


def _flip(rng, data):
  if data:
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)


def _overwrite(rng, data):
  if data:
    i = rng.randrange(len(data))
    for j in range(i, min(len(data), i + rng.randint(1, 8))):
      data[j] = rng.choice((0, 0xff, 0x7f, 0x80, rng.randrange(256)))


def _truncate(rng, data):
  if data:
    del data[rng.randrange(len(data)):]


def _delete(rng, data):
  if data:
    i = rng.randrange(len(data))
    del data[i:i + rng.randint(1, 64)]


def _insert(rng, data):
  i = rng.randrange(len(data) + 1)
  data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _duplicate(rng, data):
  if data:
    i = rng.randrange(len(data))
    chunk = data[i:i + rng.randint(1, 256)]
    j = rng.randrange(len(data) + 1)
    data[j:j] = chunk


def _dimensions(rng, data):
  """Rewrites a PNG IHDR / JPEG SOF size field with an extreme value."""
  value = rng.choice((0, 1, 0x7fff, 0xffff, 0x10000, 0x7fffffff))
  png = data.find(b'IHDR')
  sof = max(data.find(b'\xff\xc0'), data.find(b'\xff\xc2'))
  if png >= 0 and len(data) >= png + 12:
    offset = png + 4 + rng.choice((0, 4))
    data[offset:offset + 4] = value.to_bytes(4, 'big')
  elif sof >= 0 and len(data) >= sof + 9:
    offset = sof + 5 + rng.choice((0, 2))
    data[offset:offset + 2] = (value & 0xffff).to_bytes(2, 'big')


MUTATIONS: Tuple[Mutation, ...] = (_flip, _overwrite, _truncate, _delete,
                                   _insert, _duplicate, _dimensions)


def mutate(rng: random.Random, data: bytes, count: int) -> bytes:
  out = bytearray(data)
  for _ in range(count):
    rng.choice(MUTATIONS)(rng, out)
  return bytes(out)


def check_one(data: bytes, path: str) -> Tuple[str, float]:
  """Runs the ingestion check on one input; asserts every property.

  Returns:
    ('accepted' | the quarantine reason, seconds).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with open(path, 'wb') as f:
    f.write(data)
  start = time.perf_counter()
  ok, problem = ieg.ImageCheck(MAX_PIXELS)({'path': path})
  seconds = time.perf_counter() - start
  assert seconds < TIME_LIMIT_S, f'took {seconds:.2f} s'
  assert (ok is None) != (problem is None), (ok, problem)
  if problem:
    reason, detail = problem
    assert reason in ieg.REASONS and detail, problem
    return reason, seconds
  _, jpeg, _ = ok
  assert jpeg.startswith(ieg.JPEG_MAGIC)
  with Image.open(io.BytesIO(jpeg)) as image:
    size, mode = image.size, image.mode
  assert mode == 'RGB', mode
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  assert tuple(decoded.shape) == (size[1], size[0], 3), (decoded.shape, size)
  return 'accepted', seconds


def main(argv: List[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=60)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='/tmp/fuzz_images')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  rng = random.Random(args.seed)
  corpus = list(seeds().items())
  verdicts = collections.Counter()
  slowest = (0.0, '')
  path = os.path.join(args.out, 'input')
  end = time.time() + args.seconds
  tried = 0
  while time.time() < end:
    if rng.random() < 0.05:
      name, data = 'random', bytes(rng.randrange(256)
                                   for _ in range(rng.randint(0, 2048)))
    else:
      name, seed = rng.choice(corpus)
      data = mutate(rng, seed, rng.randint(1, 6))
    tried += 1
    try:
      verdict, seconds = check_one(data, path)
    except Exception:  # pylint: disable=broad-except
      failed = os.path.join(args.out, f'failure-{tried}-{name}.bin')
      with open(failed, 'wb') as f:
        f.write(data)
      print(f'FAILURE on input {tried} (from {name}), saved to {failed}:')
      raise
    verdicts[verdict] += 1
    slowest = max(slowest, (seconds, name))
  print(f'{tried} inputs in {args.seconds:.0f} s (seed {args.seed}), no '
        f'failure; slowest check {slowest[0] * 1000:.1f} ms ({slowest[1]})')
  for verdict, count in verdicts.most_common():
    print(f'  {verdict:26s} {count}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
