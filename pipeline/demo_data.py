"""Deterministic synthetic dermoscopy-like data in three archive layouts.

``make demo`` needs data on a machine that has no HAM10000 download, so the
project draws its own, in the layouts ingestion reads (``layout``):

  * ``ham10000``: ``HAM10000_metadata.csv`` (the official columns) and
    ``images/<image_id>.jpg``; HAM10000's seven classes.
  * ``isic2019``: ``ISIC_2019_Training_GroundTruth.csv`` (image + one-hot
    MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK as ``1.0`` / ``0.0``),
    ``ISIC_2019_Training_Metadata.csv`` (image, age_approx,
    anatom_site_general, lesion_id, sex; some lesion ids empty, as in the
    release) and ``ISIC_2019_Training_Input/<image>.jpg``; the eight classes
    of ISIC 2019 (R5), SCC included, no UNK rows.
  * ``folders``: ``<class>/<image>.jpg`` with the ten Indonesian class names
    of R4's skin-disease archive; one image per lesion (the layout has no
    lesion ids, so each file is its own lesion).

Images are 200x150 RGB, as the downsampled HAM10000 set.  Each class has its
own appearance model, loosely after its dermoscopic / clinical features
(colour, border regularity, size, texture: globules, vessels, scale,
lacunae, a central white patch).  Every attribute is drawn from a wide
per-class distribution and, with some probability, from another class's
distribution, so classes overlap: a small CNN learns them well above chance
but not perfectly, which keeps gates and per-class metrics meaningful.
Class counts follow the source's imbalance (HAM10000's release, R5's ISIC
2019 training counts; R4 publishes none, so its classes are even), damped
so the rarest class still has ``per_class`` images.  Some lesions have
several images (rotated / shifted / re-lit views of one lesion), ages are
missing and sex / site are unknown for a few percent of rows, as in the
real data.

Output is a pure function of ``(layout, per_class, seed)``.
"""

import csv
import io
import math
import os
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np
from PIL import Image

from pipeline import configs

WIDTH, HEIGHT = 200, 150

# HAM10000 class counts (the full 10,015-image release).
HAM10000_COUNTS = {'akiec': 327, 'bcc': 514, 'bkl': 1099, 'df': 115,
                   'mel': 1113, 'nv': 6705, 'vasc': 142}
# ISIC 2019 training counts of R5 (../shared/REFERENCES.md), in the ground
# truth's column order.
ISIC2019_COUNTS = {'MEL': 3774, 'NV': 10639, 'BCC': 3326, 'AK': 1264,
                   'BKL': 2293, 'DF': 192, 'VASC': 205, 'SCC': 656}
# R4's ten classes (folder names); its counts are not published.
R4_CLASSES = ('Dermatitis Atopik', 'Eksim', 'Infeksi Jamur', 'Infeksi Virus',
              'Karsinoma Sel Basal', 'Kutil', 'Melanoma', 'Psoriasis',
              'Tahi Lalat', 'Tumor Jinak')
# Imbalance is damped: count_c ~ per_class * (n_c / n_min) ** DAMPING.
DAMPING = 0.6

METADATA_COLUMNS = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex',
                    'localization', 'dataset')
ISIC2019_METADATA_COLUMNS = ('image', 'age_approx', 'anatom_site_general',
                             'lesion_id', 'sex')

SITES = ('abdomen', 'acral', 'back', 'chest', 'ear', 'face', 'foot',
         'genital', 'hand', 'lower extremity', 'neck', 'scalp', 'trunk',
         'upper extremity')
DATASETS = ('vidir_molemax', 'vidir_modern', 'rosendahl', 'vienna_dias')
# HAM10000 site -> ISIC 2019's anatom_site_general ('' when unknown).
ISIC2019_SITES = {'abdomen': 'anterior torso', 'acral': 'palms/soles',
                  'back': 'posterior torso', 'chest': 'anterior torso',
                  'ear': 'head/neck', 'face': 'head/neck',
                  'foot': 'lower extremity', 'genital': 'oral/genital',
                  'hand': 'upper extremity',
                  'lower extremity': 'lower extremity', 'neck': 'head/neck',
                  'scalp': 'head/neck', 'trunk': 'lateral torso',
                  'upper extremity': 'upper extremity', 'unknown': ''}

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

# ISIC 2019's SCC: a pink, keratotic, ill-defined tumour with scale.
_SCC = dict(color=(200, 115, 105), color2=(240, 230, 210), radius=0.29,
            irregular=0.16, soft=0.14, texture='scale', strength=0.75, age=72,
            sites=('face', 'scalp', 'hand', 'upper extremity'))
# R4's inflammatory, infectious and benign classes (clinical photographs in
# the source; here drawn like the others).
_R4_PROFILES: Dict[str, Dict] = {
    'Dermatitis Atopik': dict(
        color=(205, 110, 100), color2=(235, 200, 190), radius=0.42,
        irregular=0.20, soft=0.28, texture='scale', strength=0.3, age=22,
        sites=('face', 'neck', 'upper extremity')),
    'Eksim': dict(
        color=(195, 95, 85), color2=(240, 220, 200), radius=0.38,
        irregular=0.22, soft=0.24, texture='milia', strength=0.45, age=38,
        sites=('hand', 'upper extremity', 'lower extremity')),
    'Infeksi Jamur': dict(
        color=(190, 100, 80), color2=(225, 180, 150), radius=0.40,
        irregular=0.08, soft=0.10, texture='white_center', strength=0.8,
        age=35, sites=('trunk', 'foot', 'genital')),
    'Infeksi Virus': dict(
        color=(215, 130, 120), color2=(250, 235, 225), radius=0.20,
        irregular=0.05, soft=0.10, texture='lacunae', strength=0.5, age=18,
        sites=('face', 'trunk', 'hand')),
    'Karsinoma Sel Basal': _PROFILES['bcc'],
    'Kutil': dict(
        color=(170, 140, 110), color2=(120, 90, 70), radius=0.20,
        irregular=0.15, soft=0.05, texture='network', strength=0.5, age=25,
        sites=('hand', 'foot', 'face')),
    'Melanoma': _PROFILES['mel'],
    'Psoriasis': dict(
        color=(200, 90, 90), color2=(245, 245, 240), radius=0.40,
        irregular=0.12, soft=0.08, texture='scale', strength=0.8, age=45,
        sites=('scalp', 'back', 'lower extremity', 'upper extremity')),
    'Tahi Lalat': _PROFILES['nv'],
    'Tumor Jinak': _PROFILES['bkl'],
}


class ClassSet(NamedTuple):
  """A layout's classes: names in order, appearance, source counts."""
  labels: Tuple[str, ...]
  profiles: Dict[str, Dict]
  counts: Dict[str, int]       # Relative sizes (the source's imbalance).
  single_view: bool = False    # One image per lesion (no lesion ids).


CLASS_SETS: Dict[str, ClassSet] = {
    'ham10000': ClassSet(LABELS, _PROFILES, HAM10000_COUNTS),
    'isic2019': ClassSet(
        tuple(ISIC2019_COUNTS),
        {**{k: _PROFILES[v] for k, v in
            configs.DEFAULT_LABEL_MAPS['isic2019'].items()},
         'SCC': _SCC},
        ISIC2019_COUNTS),
    'folders': ClassSet(R4_CLASSES, _R4_PROFILES,
                        {name: 1 for name in R4_CLASSES}, single_view=True),
}
LAYOUTS = tuple(CLASS_SETS)
for _set in CLASS_SETS.values():
  assert set(_set.labels) == set(_set.profiles) == set(_set.counts)
# The generated ISIC 2019 archive holds exactly the isic2019 label set.
assert sorted(CLASS_SETS['isic2019'].labels) == sorted(
    configs.LABEL_SETS['isic2019'])

# Probability that an attribute is drawn from another class's profile.
CONFUSION = 0.22


def class_counts(per_class: int, layout: str = 'ham10000') -> Dict[str, int]:
  """Images per class: the rarest class gets ``per_class``."""
  if per_class < 1:
    raise ValueError(f'per_class must be >= 1, got {per_class}')
  counts = _class_set(layout).counts
  smallest = min(counts.values())
  return {name: max(per_class,
                    int(round(per_class * (n / smallest) ** DAMPING)))
          for name, n in counts.items()}


def _class_set(layout: str) -> ClassSet:
  if layout not in CLASS_SETS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  return CLASS_SETS[layout]


def _pick(rng: np.random.Generator, classes: ClassSet, name: str, key: str):
  """An attribute of class name, sometimes borrowed from another class."""
  if rng.random() < CONFUSION:
    name = classes.labels[rng.integers(len(classes.labels))]
  return classes.profiles[name][key]


def _lesion_params(rng: np.random.Generator, classes: ClassSet,
                   dx: str) -> Dict:
  """Draws one lesion's appearance (shared by all images of the lesion)."""
  color = np.array(_pick(rng, classes, dx, 'color'), np.float32)
  color = np.clip(color * rng.normal(1.0, 0.15) + rng.normal(0, 9, 3), 0, 255)
  color2 = np.array(_pick(rng, classes, dx, 'color2'), np.float32)
  color2 = np.clip(color2 + rng.normal(0, 12, 3), 0, 255)
  harmonics = rng.integers(2, 7, size=4)
  return dict(
      color=color,
      color2=color2,
      radius=float(np.clip(_pick(rng, classes, dx, 'radius') * rng.normal(1, 0.25),
                           0.08, 0.48)),
      aspect=float(rng.uniform(0.7, 1.0)),
      irregular=float(abs(_pick(rng, classes, dx, 'irregular') * rng.normal(1, 0.4))),
      harmonics=harmonics,
      phases=rng.uniform(0, 2 * math.pi, size=4),
      soft=float(np.clip(_pick(rng, classes, dx, 'soft') * rng.normal(1, 0.3),
                         0.02, 0.3)),
      texture=_pick(rng, classes, dx, 'texture'),
      strength=float(np.clip(_pick(rng, classes, dx, 'strength') * rng.normal(1, 0.3),
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


def _metadata(rng: np.random.Generator, profile: Dict
              ) -> Tuple[str, str, str, str, str]:
  """(dx_type, age, sex, localization, dataset) for one lesion."""
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
  dx_type = ('histo' if profile is not _PROFILES['nv'] or rng.random() < 0.3
             else ('follow_up' if rng.random() < 0.8 else 'consensus'))
  return dx_type, age, sex, site, dataset


def _encode_jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


class _Image(NamedTuple):
  label: str
  lesion_no: int
  image_no: int
  jpeg: bytes
  metadata: Tuple[str, str, str, str, str]  # _metadata's tuple


def _draw(classes: ClassSet, counts: Dict[str, int], seed: int,
          write: Callable[[_Image], None]) -> int:
  """Draws every image, class by class, and hands each to write."""
  image_no = lesion_no = 0
  for class_index, name in enumerate(classes.labels):
    # One generator per class: changing one class's count leaves the others.
    rng = np.random.default_rng([seed, class_index])
    remaining = counts[name]
    while remaining > 0:
      lesion_no += 1
      views = min(remaining,
                  1 if rng.random() < 0.65 else int(rng.integers(2, 4)))
      if classes.single_view:
        views = 1
      params = _lesion_params(rng, classes, name)
      meta = _metadata(rng, classes.profiles[name])
      for _ in range(views):
        image_no += 1
        write(_Image(name, lesion_no, image_no,
                     _encode_jpeg(_render(params, rng)), meta))
      remaining -= views
  return image_no


def _write_file(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _write_csv(path: str, header, rows, order: np.ndarray) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for i in order:
      writer.writerow(rows[i])


# The file each layout's archive is recognised by (refused if present).
MARKER_FILES = {'ham10000': configs.HAM10000_CSV,
                'isic2019': configs.ISIC2019_GROUND_TRUTH,
                'folders': R4_CLASSES[0]}
ISIC2019_COLUMNS = configs.ISIC2019_COLUMN_ORDER
ISIC2019_IMAGE_DIR = 'ISIC_2019_Training_Input'


def generate(out_dir: str, per_class: int = 30, seed: int = 0,
             layout: str = 'ham10000') -> Dict[str, int]:
  """Writes the dataset under out_dir; returns the image count per class.

  Args:
    out_dir: created if missing; must not already hold such an archive.
    per_class: images of the rarest class (others scale with the source's
      mix).
    seed: the whole output is a function of (layout, per_class, seed).
    layout: 'ham10000', 'isic2019' or 'folders' (module docstring).
  """
  classes = _class_set(layout)
  marker = os.path.join(out_dir, MARKER_FILES[layout])
  if os.path.exists(marker):
    raise FileExistsError(f'{marker} exists; choose an empty directory')
  counts = class_counts(per_class, layout)
  rows: List[Tuple[str, ...]] = []
  meta_rows: List[Tuple[str, ...]] = []

  def write(image: _Image) -> None:
    dx_type, age, sex, site, dataset = image.metadata
    if layout == 'ham10000':
      image_id = f'SYN_{image.image_no:07d}'
      _write_file(os.path.join(out_dir, 'images', image_id + '.jpg'),
                  image.jpeg)
      rows.append((f'SYN_L{image.lesion_no:06d}', image_id, image.label,
                   dx_type, age, sex, site, dataset))
    elif layout == 'isic2019':
      image_id = f'ISIC_{image.image_no:07d}'
      _write_file(os.path.join(out_dir, ISIC2019_IMAGE_DIR, image_id + '.jpg'),
                  image.jpeg)
      rows.append((image_id,) + tuple(
          '1.0' if c == image.label else '0.0' for c in ISIC2019_COLUMNS))
      # As in the release, only part of the archive has lesion ids (an
      # image without one is its own lesion).
      lesion_id = ('' if image.lesion_no % 5 == 0
                   else f'IL_{image.lesion_no:07d}')
      meta_rows.append((image_id, age, ISIC2019_SITES[site], lesion_id,
                        '' if sex == 'unknown' else sex))
    else:
      _write_file(os.path.join(out_dir, image.label,
                               f'SYN_{image.image_no:07d}.jpg'), image.jpeg)

  os.makedirs(out_dir, exist_ok=True)
  total = _draw(classes, counts, seed, write)
  # Shuffle rows deterministically so the CSVs are not sorted by class.
  order = np.random.default_rng(seed).permutation(total)
  if layout == 'ham10000':
    _write_csv(marker, METADATA_COLUMNS, rows, order)
  elif layout == 'isic2019':
    _write_csv(marker, ('image',) + ISIC2019_COLUMNS, rows, order)
    _write_csv(os.path.join(out_dir, configs.ISIC2019_METADATA),
               ISIC2019_METADATA_COLUMNS, meta_rows, order)
  return counts
