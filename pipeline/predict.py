"""`skinlesion predict`: class probabilities for a folder of images.

Uses a version directory pushed by MobilePusher (or the latest version of
its base directory), after checking every file against the version's
manifest (``release.verify_version``: a tampered, truncated, missing or
added file is refused before anything is loaded).  Each image goes through
the pipeline's own preprocessing: ingestion's conversion (RGB JPEGs byte for
byte, PNG re-encoded as RGB JPEG: ``image_example_gen.images.to_rgb_jpeg``),
then decode, bilinear resize to the model's input size, round to uint8
(``models.preprocessing.decode_and_resize``); then either the SavedModel's
``serving_images`` signature (pixels / 255) or a pushed .tflite file (its
input type's normalization).  These are the probabilities the Evaluator's
``serving_default`` path computes for the same image (identical
preprocessing).

A model that also reads patient metadata (``mixed_input``) gets it from
``--metadata CSV`` (HAM10000 or ISIC 2019 columns, pipeline/metadata_csv.py:
read and normalized as ingestion does); an image without a row, or every
image when no CSV is given, gets missing values (age NaN, sex and site
'unknown'), as ingestion writes a missing value, and the command reports
how many.  ``skinlesion serve`` takes them from its form (or the same
CSV).

Output: CSV, one row per readable image: ``image`` (file name without
extension, as the ISIC challenge names images) and one probability column
per class: our label names in the model's output order, or with
``--format isic`` the ISIC 2018 columns ``MEL,NV,BCC,AKIEC,BKL,DF,VASC``
(configs.ISIC2018_COLUMNS maps the HAM10000 labels), or for a model on the
isic2019 label set the ISIC 2019 ones ``MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``
with UNK = 0.  Files with an image extension
that cannot be read or decoded get no row: they are listed (with the reason)
on stderr and in ``<out>.errors.csv``, and the command exits with status 2.
Other files in the folder (LICENSE.txt ...) are ignored.
"""

import csv
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.image_example_gen import images
from mobile_export import release
from mobile_export import tflite
from models import explain
from models import features
from models import metadata_vector
from models import preprocessing
from pipeline import configs
from pipeline import metadata_csv

FORMATS = ('labels', 'isic')
BATCH_SIZE = 64


@dataclasses.dataclass
class Predictions:
  """Probabilities of the readable images, and why the others were skipped."""
  version_dir: str
  labels: List[str]
  images: List[str]              # image names (file stem)
  probabilities: np.ndarray      # [N, classes], labels' order
  errors: List[Tuple[str, str, str]]  # (file, reason, detail)
  # The model's metadata inputs (empty: an image-only model), and the
  # images predicted with missing metadata (no CSV row, or no CSV).
  metadata_keys: Tuple[str, ...] = ()
  without_metadata: List[str] = dataclasses.field(default_factory=list)


def list_images(directory: str) -> List[str]:
  """Image files (by extension) directly in directory, sorted by name."""
  if not tf.io.gfile.isdir(directory):
    raise FileNotFoundError(f'{directory}: not a directory')
  return sorted(os.path.join(directory, name)
                for name in tf.io.gfile.listdir(directory)
                if not name.startswith('.')
                and os.path.splitext(name)[1].lower()
                in images.IMAGE_EXTENSIONS
                and not tf.io.gfile.isdir(os.path.join(directory, name)))


def _jpegs(paths: Sequence[str]):
  """(readable [(path, jpeg)], errors [(path, reason, detail)])."""
  check = images.ImageCheck(configs.MAX_IMAGE_PIXELS)
  readable, errors = [], []
  for path in paths:
    ok, problem = check({'path': path})
    if problem:
      errors.append((path, problem[0], problem[1]))
    else:
      readable.append((path, ok[1]))
  return readable, errors


def _pixels(jpeg: bytes, image_size: int) -> np.ndarray:
  return preprocessing.decode_and_resize(tf.constant(jpeg), image_size).numpy()


Metadata = Dict[str, Any]   # {features.AGE_KEY: float, SEX_KEY: str, ...}


def metadata_tensors(keys: Sequence[str], metadata: Sequence[Metadata]
                     ) -> Dict[str, tf.Tensor]:
  """The serving_images metadata inputs of N images.  Whatever is not given
  is missing, as ingestion writes it: age NaN, sex / site 'unknown'."""
  out = {}
  for key in keys:
    if key == features.AGE_KEY:
      out[key] = tf.constant(
          [float('nan') if m.get(key) is None else float(m[key])
           for m in metadata], tf.float32)
    else:
      out[key] = tf.constant([str(m.get(key) or features.UNKNOWN)
                              for m in metadata], tf.string)
  return out


class _SavedModelPredictor:

  def __init__(self, version_dir: str):
    loaded = tf.saved_model.load(version_dir)
    self._fn = loaded.signatures[features.IMAGE_SIGNATURE]
    self._gradcam = loaded.signatures.get(explain.GRADCAM_SIGNATURE)
    self._loaded = loaded  # Keeps the signatures' variables alive.
    inputs = self._fn.structured_input_signature[1]
    self.image_size = int(inputs['images'].shape[1])
    # mixed_input: age, sex and localization beside the images.
    self.metadata_keys = tuple(k for k in features.METADATA_KEYS
                               if k in inputs)

  def __call__(self, pixels: np.ndarray,
               metadata: Optional[Sequence[Metadata]] = None) -> np.ndarray:
    metadata = list(metadata or [{}] * len(pixels))
    out = []
    for start in range(0, len(pixels), BATCH_SIZE):
      batch = preprocessing.to_model_input(
          tf.constant(pixels[start:start + BATCH_SIZE]))
      extra = metadata_tensors(self.metadata_keys,
                               metadata[start:start + BATCH_SIZE])
      out.append(self._fn(images=batch, **extra)[
          features.PREDICTION_KEY].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def gradcam(self, pixels: np.ndarray) -> Optional[np.ndarray]:
    """Heatmaps [N, h, w] of the top class, or None without the signature."""
    if self._gradcam is None:
      return None
    answer = self._gradcam(images=preprocessing.to_model_input(
        tf.constant(pixels)))
    return answer[explain.HEATMAP_KEY].numpy()


class _TFLitePredictor:

  def __init__(self, path: str):
    with tf.io.gfile.GFile(path, 'rb') as f:
      self._buffer = f.read()
    image, vector = tflite.input_tensors(self._buffer)
    self.image_size = int(image['shape'][1])
    # A metadata model's .tflite takes the encoded metadata vector beside
    # the image (models/metadata_vector.py).
    self.metadata_keys = () if vector is None else features.METADATA_KEYS

  def __call__(self, pixels: np.ndarray,
               metadata: Optional[Sequence[Metadata]] = None) -> np.ndarray:
    if not self.metadata_keys:
      return tflite.predict(self._buffer, pixels)
    # Whatever is not given is missing, as in metadata_tensors.
    metadata = list(metadata or [{}] * len(pixels))
    vectors = metadata_vector.encode_batch(
        *([m.get(key) for m in metadata] for key in features.METADATA_KEYS))
    return tflite.predict(self._buffer, pixels, vectors)

  def gradcam(self, pixels: np.ndarray) -> None:
    del pixels  # A .tflite has no gradients.
    return None


class PushedModel:
  """A pushed version, verified against its manifest and loaded once.

  ``skinlesion predict`` and ``skinlesion serve`` both use it, so a page
  and a CSV show the same numbers for the same file.
  """

  def __init__(self, model_dir: str, tflite_format: Optional[str] = None):
    """See ``predict`` for the arguments and the errors raised."""
    self.version_dir = release.resolve_version_dir(model_dir)
    self.manifest = release.verify_version(self.version_dir)
    self.labels = list(self.manifest['labels'])
    self.tflite_format = tflite_format
    if tflite_format is None:
      self.file = 'SavedModel, serving_images signature'
      self._model = _SavedModelPredictor(self.version_dir)
    else:
      name = tflite.file_name(tflite_format)
      if name not in self.manifest['files']:
        raise FileNotFoundError(
            f'{self.version_dir} has no {name} (pushed .tflite files: '
            f'{[f for f in self.manifest["files"] if f.endswith(".tflite")]})')
      self.file = name
      self._model = _TFLitePredictor(os.path.join(self.version_dir, name))
    self.image_size = self._model.image_size
    # Besides the image, the model takes these (mixed_input: age, sex,
    # localization); an image-only model takes none.
    self.metadata_keys = self._model.metadata_keys

  def pixels(self, jpeg: bytes) -> np.ndarray:
    """uint8 [S, S, 3]: the pipeline's decode and resize of one JPEG."""
    return _pixels(jpeg, self.image_size)

  def probabilities(self, pixels: np.ndarray,
                    metadata: Optional[Sequence[Metadata]] = None
                    ) -> np.ndarray:
    """float32 [N, classes] in the labels' order, for uint8 [N, S, S, 3]
    (and, for a model that takes them, each image's metadata; missing
    values as ingestion writes them)."""
    if not len(pixels):
      return np.zeros((0, len(self.labels)), np.float32)
    probabilities = self._model(pixels, metadata)
    if probabilities.shape[1:] != (len(self.labels),):
      raise ValueError(f'the model outputs {probabilities.shape[1:]} scores '
                       f'for {len(self.labels)} labels')
    return probabilities

  def gradcam(self, pixels: np.ndarray) -> Optional[np.ndarray]:
    """Grad-CAM heatmaps [N, h, w] in [0, 1] of each image's top class
    (the SavedModel's serving_gradcam); None for a .tflite, or a model
    exported without that signature."""
    return self._model.gradcam(pixels)


def predict(model_dir: str, image_paths: Sequence[str],
            tflite_format: Optional[str] = None,
            metadata: Optional[metadata_csv.MetadataTable] = None
            ) -> Predictions:
  """Verifies the version, then predicts every readable image.

  Args:
    model_dir: a pushed version directory, or their base directory (the
      latest version is used).
    image_paths: image files.
    tflite_format: None: the SavedModel; else a .tflite format of the
      version (configs.TFLITE_FILE_FORMATS, e.g. 'float16', or
      'image_only_int8' for a metadata model's image-only file).
    metadata: patient metadata by image name (file stem), for a model that
      reads it; images without a row get missing values.

  Raises:
    release.VersionIntegrityError: the version does not match its manifest.
    FileNotFoundError: no such version, or the .tflite was not pushed.
  """
  model = PushedModel(model_dir, tflite_format)
  readable, errors = _jpegs(image_paths)
  pixels = np.stack([model.pixels(jpeg) for _, jpeg in readable]
                    ) if readable else np.zeros(
                        (0, model.image_size, model.image_size, 3), np.uint8)
  names = [os.path.splitext(os.path.basename(p))[0] for p, _ in readable]
  rows, without = (metadata.lookup(names) if metadata is not None
                   else ([{}] * len(names), list(names)))
  probabilities = model.probabilities(pixels, rows)
  return Predictions(model.version_dir, model.labels, names, probabilities,
                     errors, tuple(model.metadata_keys),
                     without if model.metadata_keys else [])


def columns(labels: Sequence[str], fmt: str
            ) -> List[Tuple[str, Optional[int]]]:
  """[(CSV column, index into the probabilities, None: always 0)] in column
  order.  'isic': the ISIC 2018 columns for the HAM10000 labels, the ISIC
  2019 ones (UNK = 0) for the isic2019 label set."""
  if fmt == 'labels':
    return [(label, i) for i, label in enumerate(labels)]
  if fmt != 'isic':
    raise ValueError(f'format must be one of {FORMATS}: {fmt!r}')
  if set(labels) == set(configs.ISIC2018_COLUMNS):
    index = {configs.ISIC2018_COLUMNS[label]: i
             for i, label in enumerate(labels)}
    return [(c, index[c]) for c in configs.ISIC2018_COLUMN_ORDER]
  if set(labels) == set(configs.LABEL_SETS['isic2019']):
    index = {label: i for i, label in enumerate(labels)}
    return [(c, index.get(c)) for c in configs.ISIC2019_COLUMN_ORDER]
  raise ValueError(
      f'labels {list(labels)} map onto neither the ISIC 2018 columns '
      f'{list(configs.ISIC2018_COLUMN_ORDER)} (the ham10000 label set) nor '
      f'the ISIC 2019 ones {list(configs.ISIC2019_COLUMN_ORDER)} (isic2019)')


def write_csv(predictions: Predictions, out: str, fmt: str = 'labels'
              ) -> Optional[str]:
  """Writes the predictions; returns the errors file's path, if any."""
  cols = columns(predictions.labels, fmt)
  with tf.io.gfile.GFile(out, 'w') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(['image'] + [c for c, _ in cols])
    for name, row in zip(predictions.images, predictions.probabilities):
      # 9 significant digits: float32 values round-trip exactly.
      writer.writerow([name] + [f'{float(row[i]):.9g}' if i is not None
                                else '0' for _, i in cols])
  errors_path = out + '.errors.csv'
  if tf.io.gfile.exists(errors_path):
    tf.io.gfile.remove(errors_path)  # Not from this run.
  if not predictions.errors:
    return None
  with tf.io.gfile.GFile(errors_path, 'w') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(['file', 'reason', 'detail'])
    writer.writerows(predictions.errors)
  return errors_path
