"""ImageExampleGen: dermoscopy archives -> lesion-disjoint tf.Example splits.

A FileBasedExampleGen with its own executor, so it keeps what the standard
ExampleGen does (input fingerprinting for the cache, spans, sharded GZIP
TFRecords, hash-partitioned splits) and adds image archives as input, with a
quarantine for everything that cannot be trusted.

Layouts (``layout``):
  * ``ham10000``: ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type,
    age, sex, localization, dataset) at the root and ``<image_id>.jpg`` in any
    folder under it (the release ships ``HAM10000_images_part_1/``, ``_2/``).
  * ``isic2019``: ``ISIC_2019_Training_GroundTruth.csv`` (image + one-hot
    columns MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK),
    ``ISIC_2019_Training_Metadata.csv`` (image, age_approx,
    anatom_site_general, lesion_id, sex) and the images under the root.
  * ``folders``: ``<root>/<class>/<image>``, any class names; the file name is
    the image id and, lacking lesion information, the lesion id.
  * ``csv``: ``labels.csv`` at the root with columns ``path`` (relative to the
    root) and ``label``, and optionally image_id, lesion_id, age, sex,
    localization, dataset.
A label map (``{'AK': 'akiec', ...}``) brings source labels to the canonical
label list; the list is written into the Examples artifact (``labels.txt``)
and every example's ``label`` is an index into it.

Splits are ``partition_feature_name='lesion_id'`` hash buckets: all images
of a lesion land in one split, the same split on every run and machine.

Every input either becomes an example or lands in the quarantine
(``quarantine.csv``, one row per record with its reason); the numbers in
``ingestion_report.json`` reconcile: ``examples + quarantined == input rows +
image files without a row``.  The run fails, naming the report, when the
quarantined fraction exceeds ``max_quarantine_fraction`` or when a class is
absent from a split.  Grayscale, CMYK, alpha and PNG images are converted to
RGB JPEG and counted; two copies of one image under one lesion are reported,
under two lesions (a split leak) all but the first are quarantined.

The package's modules:
  * ``images``: the image check (read, decode, size limit, conversion to RGB
    JPEG) and its quarantine reasons; free of Beam and TFX, so ``skinlesion
    predict`` and ``serve`` check an upload as ingestion does.
  * ``layouts``: listing each layout (CSV reading, the label map, span
    folders) into records and rows quarantined on sight.
  * ``executor``: the Beam executor (image checks in the workers, same-bytes
    resolution, the lesion-hash partition, the report and its checks).
  * ``component``: the ``ImageExampleGen`` component.
The names below are re-exported as ``image_example_gen.<name>``; those of
``executor`` and ``component`` are imported on first use, so that importing
the package (or ``images`` / ``layouts``) does not import Beam or TFX.
"""

import importlib
from typing import Any

# pylint: disable=g-multiple-import,unused-import
from components.image_example_gen.images import (
    CORRUPT, EMPTY, IMAGE_EXTENSIONS, ImageCheck, JPEG_MAGIC, JPEG_QUALITY,
    MISSING_IMAGE, SUPPORTED_FORMATS, TOO_MANY_PIXELS, UNSUPPORTED,
    to_rgb_jpeg)
from components.image_example_gen.layouts import (
    _Labeler, archive_labels, BAD_AGE, CsvRow, DUPLICATE_ID, GENERIC_CSV,
    HAM10000_CSV, IngestionError, INPUT_PATTERNS, ISIC2019_CLASSES,
    ISIC2019_GROUND_TRUTH, ISIC2019_METADATA, latest_span_root, list_archive,
    list_csv, list_folders, list_ham10000, list_isic2019, LISTERS, Listing,
    MALFORMED_ROW, MAX_AGE, METADATA_COLUMNS, MIN_AGE, NO_ROW, OUTSIDE_ROOT,
    patient_metadata, read_csv, UNKNOWN_LABEL)
# pylint: enable=g-multiple-import,unused-import

# Imported on first use (they import Beam and TFX): name -> module.
_LAZY = {
    'archive_root': 'executor',
    'Executor': 'executor',
    'LABELS_FILE': 'executor',
    'QUARANTINE_COLUMNS': 'executor',
    'QUARANTINE_FILE': 'executor',
    'REASONS': 'executor',
    'record_to_example': 'executor',
    'REPORT_FILE': 'executor',
    'SAME_BYTES_OTHER_LESION': 'executor',
    'ImageExampleGen': 'component',
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
    value = getattr(module, name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
