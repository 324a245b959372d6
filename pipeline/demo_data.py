"""Deterministic synthetic dermoscopy-like data in the HAM10000 layout.

``make demo`` needs data on a machine that has no HAM10000 download, so the
project draws its own: ``HAM10000_metadata.csv`` (the official columns) and
``images/<image_id>.jpg`` (200x150 RGB, as the downsampled HAM10000 set).

Each class has its own appearance model, loosely after the dermoscopic
features of the real classes (colour, border regularity, size, texture:
globules, vessels, scale, lacunae, a central white patch).  Every attribute is
drawn from a wide per-class distribution and, with some probability, from
another class's distribution, so classes overlap: a small CNN learns them
well above chance but not perfectly, which keeps gates and per-class metrics
meaningful.  Class counts follow HAM10000's order and imbalance, damped so the
rarest class still has ``per_class`` images.  Some lesions have several images
(rotated / shifted / re-lit views of one lesion), ages are missing and
sex / site are ``unknown`` for a few percent of rows, as in the real data.

Output is a pure function of ``(per_class, seed)``.
"""

import csv
import io
import math
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from pipeline import configs

WIDTH, HEIGHT = 200, 150

# HAM10000 class counts (the full 10,015-image release).
HAM10000_COUNTS = {'akiec': 327, 'bcc': 514, 'bkl': 1099, 'df': 115,
                   'mel': 1113, 'nv': 6705, 'vasc': 142}
# Imbalance is damped: count_c ~ per_class * (n_c / n_min) ** DAMPING.
DAMPING = 0.6

METADATA_COLUMNS = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex',
                    'localization', 'dataset')

SITES = ('abdomen', 'acral', 'back', 'chest', 'ear', 'face', 'foot',
         'genital', 'hand', 'lower extremity', 'neck', 'scalp', 'trunk',
         'upper extremity')
DATASETS = ('vidir_molemax', 'vidir_modern', 'rosendahl', 'vienna_dias')

# Per-class appearance: mean RGB of the lesion body, a second colour mixed in
# by texture, radius (fraction of image height), border irregularity,
# edge softness, texture kind and strength, mean age, favoured sites.
_PROFILES: Dict[str, Dict] = {
    'nv': dict(color=(120, 75, 45), color2=(80, 50, 30), radius=0.30,
               irregular=0.05, soft=0.06, texture='network', strength=0.35,
               age=46, sites=('back', 'lower extremity', 'trunk', 'abdomen')),
    'mel': dict(color=(70, 45, 35), color2=(60, 70, 100), radius=0.36,
                irregular=0.18, soft=0.05, texture='multicolor', strength=0.6,
                age=61, sites=('back', 'trunk', 'upper extremity', 'face')),
    'bkl': dict(color=(150, 110, 70), color2=(225, 210, 180), radius=0.33,
                irregular=0.11, soft=0.05, texture='milia', strength=0.5,
                age=65, sites=('face', 'trunk', 'back', 'upper extremity')),
    'bcc': dict(color=(205, 140, 140), color2=(170, 20, 40), radius=0.25,
                irregular=0.09, soft=0.12, texture='vessels', strength=0.7,
                age=67, sites=('face', 'back', 'trunk', 'neck')),
    'akiec': dict(color=(190, 100, 85), color2=(245, 235, 225), radius=0.26,
                  irregular=0.14, soft=0.18, texture='scale', strength=0.55,
                  age=67, sites=('face', 'scalp', 'hand', 'upper extremity')),
    'vasc': dict(color=(150, 30, 70), color2=(95, 10, 40), radius=0.17,
                 irregular=0.04, soft=0.04, texture='lacunae', strength=0.6,
                 age=51, sites=('trunk', 'lower extremity', 'abdomen', 'face')),
    'df': dict(color=(140, 95, 70), color2=(235, 225, 215), radius=0.18,
               irregular=0.06, soft=0.15, texture='white_center',
               strength=0.7, age=53, sites=('lower extremity', 'upper extremity',
                                            'trunk')),
}
LABELS = configs.LABELS
assert set(_PROFILES) == set(LABELS) == set(HAM10000_COUNTS)

# Probability that an attribute is drawn from another class's profile.
CONFUSION = 0.22


def class_counts(per_class: int) -> Dict[str, int]:
  """Images per class: the rarest class gets ``per_class``."""
  if per_class < 1:
    raise ValueError(f'per_class must be >= 1, got {per_class}')
  smallest = min(HAM10000_COUNTS.values())
  return {dx: max(per_class,
                  int(round(per_class * (n / smallest) ** DAMPING)))
          for dx, n in HAM10000_COUNTS.items()}


def _pick(rng: np.random.Generator, dx: str, key: str):
  """An attribute of class dx, sometimes borrowed from another class."""
  if rng.random() < CONFUSION:
    dx = LABELS[rng.integers(len(LABELS))]
  return _PROFILES[dx][key]


def _lesion_params(rng: np.random.Generator, dx: str) -> Dict:
  """Draws one lesion's appearance (shared by all images of the lesion)."""
  color = np.array(_pick(rng, dx, 'color'), np.float32)
  color = np.clip(color * rng.normal(1.0, 0.15) + rng.normal(0, 9, 3), 0, 255)
  color2 = np.array(_pick(rng, dx, 'color2'), np.float32)
  color2 = np.clip(color2 + rng.normal(0, 12, 3), 0, 255)
  harmonics = rng.integers(2, 7, size=4)
  return dict(
      color=color,
      color2=color2,
      radius=float(np.clip(_pick(rng, dx, 'radius') * rng.normal(1, 0.25),
                           0.08, 0.48)),
      aspect=float(rng.uniform(0.7, 1.0)),
      irregular=float(abs(_pick(rng, dx, 'irregular') * rng.normal(1, 0.4))),
      harmonics=harmonics,
      phases=rng.uniform(0, 2 * math.pi, size=4),
      soft=float(np.clip(_pick(rng, dx, 'soft') * rng.normal(1, 0.3),
                         0.02, 0.3)),
      texture=_pick(rng, dx, 'texture'),
      strength=float(np.clip(_pick(rng, dx, 'strength') * rng.normal(1, 0.3),
                             0.05, 1.0)),
      skin=np.array([225, 175, 150], np.float32) * rng.uniform(0.6, 1.05)
      + rng.normal(0, 10, 3),
      hairs=int(rng.poisson(0.8)),
      vignette=bool(rng.random() < 0.2),
      texture_seed=int(rng.integers(2**31)),
  )


def _render(p: Dict, rng: np.random.Generator) -> np.ndarray:
  """Renders one view of a lesion as a HEIGHTxWIDTHx3 uint8 array."""
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  angle = rng.uniform(0, 2 * math.pi)
  cx = WIDTH / 2 + rng.normal(0, 12)
  cy = HEIGHT / 2 + rng.normal(0, 9)
  scale = rng.uniform(0.9, 1.1)
  dx, dy = xx - cx, yy - cy
  cos, sin = math.cos(angle), math.sin(angle)
  u = (dx * cos + dy * sin) / HEIGHT
  v = (-dx * sin + dy * cos) / HEIGHT / p['aspect']
  dist = np.sqrt(u * u + v * v)
  theta = np.arctan2(v, u)
  border = 1.0
  for k, phase in zip(p['harmonics'], p['phases']):
    border = border + p['irregular'] * np.sin(k * theta + phase) / 2
  radius = p['radius'] * scale * border
  edge = (dist - radius) / (p['soft'] * p['radius'] + 1e-3)
  inside = 1 / (1 + np.exp(np.clip(edge, -50, 50)))
  inside = inside[..., None]

  # Skin with low-frequency shading and fine noise.
  trng = np.random.default_rng(p['texture_seed'])
  shade = 1 + 0.06 * np.sin(xx / rng.uniform(25, 60) + rng.uniform(0, 6))[..., None]
  skin = p['skin'] * shade + rng.normal(0, 4, (HEIGHT, WIDTH, 3))

  body = np.broadcast_to(p['color'], (HEIGHT, WIDTH, 3)).copy()
  rel = dist / np.maximum(radius, 1e-3)  # 0 at the centre, 1 on the border
  mix = np.zeros((HEIGHT, WIDTH), np.float32)
  s = p['strength']
  kind = p['texture']
  if kind == 'network':
    freq = trng.uniform(0.25, 0.45)
    mix = s * (np.sin(xx * freq) * np.sin(yy * freq) > 0.3)
  elif kind == 'multicolor':
    blobs = np.zeros_like(mix)
    for _ in range(trng.integers(2, 5)):
      bx, by = trng.uniform(-0.2, 0.2, 2)
      blobs += np.exp(-((u - bx) ** 2 + (v - by) ** 2) / trng.uniform(0.003, 0.01))
    mix = s * np.clip(blobs, 0, 1)
    body = body * (1 - 0.35 * (rel[..., None] < 0.5))  # dark centre
  elif kind in ('milia', 'lacunae', 'scale'):
    count = {'milia': 25, 'lacunae': 14, 'scale': 60}[kind]
    size = {'milia': 2.0, 'lacunae': 5.0, 'scale': 2.5}[kind]
    px = trng.uniform(cx - 50, cx + 50, count)
    py = trng.uniform(cy - 40, cy + 40, count)
    for x0, y0 in zip(px, py):
      mix = np.maximum(mix, np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / size ** 2))
    mix = s * mix
  elif kind == 'vessels':
    for _ in range(trng.integers(3, 7)):
      a, b = trng.uniform(0, 2 * math.pi), trng.uniform(0.02, 0.12)
      line = np.abs(np.sin(a) * (xx - cx) - np.cos(a) * (yy - cy)
                    + 25 * b * np.sin(xx / 7 + a)) < 1.2
      mix = np.maximum(mix, s * line)
  elif kind == 'white_center':
    mix = s * np.exp(-(rel ** 2) / 0.12)
  body = body * (1 - mix[..., None]) + p['color2'] * mix[..., None]
  body = body * (1 + rng.normal(0, 0.04, (HEIGHT, WIDTH, 1)))

  img = skin * (1 - inside) + body * inside
  for _ in range(p['hairs']):
    a, off = rng.uniform(0, math.pi), rng.uniform(-60, 60)
    curve = rng.uniform(-0.004, 0.004)
    d = np.abs(np.sin(a) * (xx - WIDTH / 2) - np.cos(a) * (yy - HEIGHT / 2)
               - off + curve * (xx - WIDTH / 2) ** 2)
    hair = (d < rng.uniform(0.5, 1.2))[..., None]
    img = np.where(hair, img * 0.25, img)
  if p['vignette']:
    r = np.sqrt(((xx - WIDTH / 2) / WIDTH) ** 2 + ((yy - HEIGHT / 2) / WIDTH) ** 2)
    img = img * np.clip(1.6 - 2.6 * r, 0, 1)[..., None]
  img = img * rng.uniform(0.85, 1.12)  # exposure
  return np.clip(img, 0, 255).astype(np.uint8)


def _metadata(rng: np.random.Generator, dx: str) -> Tuple[str, str, str, str, str]:
  """(dx_type, age, sex, localization, dataset) for one lesion."""
  profile = _PROFILES[dx]
  age = ''
  if rng.random() >= 0.02:
    age = f'{float(np.clip(5 * round(rng.normal(profile["age"], 14) / 5), 0, 85)):.1f}'
  sex = 'unknown' if rng.random() < 0.02 else ('male' if rng.random() < 0.54
                                               else 'female')
  if rng.random() < 0.03:
    site = 'unknown'
  elif rng.random() < 0.7:
    site = profile['sites'][rng.integers(len(profile['sites']))]
  else:
    site = SITES[rng.integers(len(SITES))]
  dataset = DATASETS[rng.choice(4, p=(0.4, 0.33, 0.22, 0.05))]
  dx_type = ('histo' if dx != 'nv' or rng.random() < 0.3
             else ('follow_up' if rng.random() < 0.8 else 'consensus'))
  return dx_type, age, sex, site, dataset


def _encode_jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def generate(out_dir: str, per_class: int = 30, seed: int = 0) -> Dict[str, int]:
  """Writes the dataset under out_dir; returns the image count per class.

  Args:
    out_dir: created if missing; must not already hold a metadata CSV.
    per_class: images of the rarest class (others scale with HAM10000's mix).
    seed: the whole output is a function of (per_class, seed).
  """
  csv_path = os.path.join(out_dir, 'HAM10000_metadata.csv')
  if os.path.exists(csv_path):
    raise FileExistsError(f'{csv_path} exists; choose an empty directory')
  image_dir = os.path.join(out_dir, 'images')
  os.makedirs(image_dir, exist_ok=True)
  counts = class_counts(per_class)
  rows: List[Tuple[str, ...]] = []
  image_no = lesion_no = 0
  for class_index, dx in enumerate(LABELS):
    # One generator per class: changing one class's count leaves the others.
    rng = np.random.default_rng([seed, class_index])
    remaining = counts[dx]
    while remaining > 0:
      lesion_no += 1
      lesion_id = f'SYN_L{lesion_no:06d}'
      views = min(remaining, 1 if rng.random() < 0.65 else int(rng.integers(2, 4)))
      params = _lesion_params(rng, dx)
      meta = _metadata(rng, dx)
      for _ in range(views):
        image_no += 1
        image_id = f'SYN_{image_no:07d}'
        with open(os.path.join(image_dir, image_id + '.jpg'), 'wb') as f:
          f.write(_encode_jpeg(_render(params, rng)))
        rows.append((lesion_id, image_id, dx) + meta)
      remaining -= views
  # Shuffle rows deterministically so the CSV is not sorted by class.
  order = np.random.default_rng(seed).permutation(len(rows))
  with open(csv_path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(METADATA_COLUMNS)
    for i in order:
      writer.writerow(rows[i])
  return counts
