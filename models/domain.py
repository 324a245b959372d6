"""The domain: what the pipeline's data means, free of any dependency.

Labels and label sets, display names, the melanoma class, the ISIC scorer
columns, age bands, the archive layouts and their file names, and the patient
metadata vocabularies.  models/, components/ and pipeline/ all read these
from here (pipeline/configs.py re-exports them beside the settings); this
module imports nothing but the standard library, so the Trainer's wheel of
models/ stays self-contained.  Feature keys, signature names and artifact
file names are in models/features.py.
"""

from typing import Dict, Optional, Tuple

# The canonical label list (HAM10000 diagnosis codes, in index order).  It is
# the only definition: ingestion encodes labels against it, the Trainer sizes
# its output from it, TFMA and the TFLite metadata name classes with it.
LABELS: Tuple[str, ...] = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
# Human-readable names, for reports and TFLite metadata.
LABEL_DISPLAY_NAMES: Dict[str, str] = {
    'akiec': 'Actinic keratosis / intraepithelial carcinoma',
    'bcc': 'Basal cell carcinoma',
    'bkl': 'Benign keratosis-like lesion',
    'df': 'Dermatofibroma',
    'mel': 'Melanoma',
    'nv': 'Melanocytic nevus',
    'vasc': 'Vascular lesion',
}
MELANOMA_LABEL = 'mel'
# Names Settings.melanoma_label='auto' recognises (compared in lower case).
MELANOMA_NAMES: Tuple[str, ...] = ('mel', 'melanoma')

def melanoma_class(labels, melanoma_label: str = 'auto') -> str:
  """The label of ``labels`` the melanoma gate applies to ('' when not
  applicable): ``melanoma_label`` 'auto' finds one of MELANOMA_NAMES, 'none'
  means none, any other value must be in the list."""
  name = (melanoma_label or 'auto').strip()
  if name.lower() == 'none':
    return ''
  if name.lower() == 'auto':
    found = [l for l in labels if l.lower() in MELANOMA_NAMES]
    return found[0] if found else ''
  if name not in labels:
    raise ValueError(f'melanoma_label {name!r} is not in the label list '
                     f'{list(labels)}')
  return name


# Named label sets (issue 19): `labels` may name one of these instead of
# listing classes.  The only definition; everything else reads Settings.labels.
LABEL_SETS: Dict[str, Tuple[str, ...]] = {
    'ham10000': LABELS,
    'isic2019': ('AK', 'BCC', 'BKL', 'DF', 'MEL', 'NV', 'SCC', 'VASC'),
}


# `labels` AUTO_LABELS: the archive's own classes, sorted (folder names or
# the label column's values); pipeline.resolve_auto_labels lists them when
# the run starts.
AUTO_LABELS = 'auto'


def labels_are_auto(labels) -> bool:
  return tuple(labels) == (AUTO_LABELS,)


def resolve_labels(labels) -> Tuple[str, ...]:
  """A named set (one name of LABEL_SETS) or an explicit list, as a tuple
  (('auto',) stays as it is until the archive is listed)."""
  if isinstance(labels, str):
    labels = (labels,)
  labels = tuple(labels)
  if len(labels) == 1 and labels[0] in LABEL_SETS:
    return LABEL_SETS[labels[0]]
  return labels

# ISIC 2018 (Task 3) column names of our labels, for `skinlesion predict
# --format isic`: the official scorer reads image,MEL,NV,BCC,AKIEC,BKL,DF,VASC.
ISIC2018_COLUMNS: Dict[str, str] = {
    'mel': 'MEL', 'nv': 'NV', 'bcc': 'BCC', 'akiec': 'AKIEC', 'bkl': 'BKL',
    'df': 'DF', 'vasc': 'VASC'}
ISIC2018_COLUMN_ORDER: Tuple[str, ...] = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL',
                                          'DF', 'VASC')
# ISIC 2019 (Task 1): the scorer reads image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,
# UNK.  A model on the isic2019 label set writes its eight classes there and
# UNK = 0 (it has no unknown class).
ISIC2019_COLUMN_ORDER: Tuple[str, ...] = ('MEL', 'NV', 'BCC', 'AK', 'BKL',
                                          'DF', 'VASC', 'SCC', 'UNK')

# Age bands: ingestion writes one of these names into every tf.Example's
# ``age_band`` feature (the Evaluator slices on it); the schema's age_band
# domain lists the same names.  (lower bound inclusive, upper exclusive).
AGE_BANDS: Tuple[Tuple[str, float, float], ...] = (
    ('<30', 0.0, 30.0),
    ('30-44', 30.0, 45.0),
    ('45-59', 45.0, 60.0),
    ('60-74', 60.0, 75.0),
    ('>=75', 75.0, float('inf')),
)
UNKNOWN_AGE_BAND = 'unknown'
AGE_BAND_NAMES: Tuple[str, ...] = tuple(b[0] for b in AGE_BANDS) + (
    UNKNOWN_AGE_BAND,)


def age_band(age: Optional[float]) -> str:
  """The age band name of an age in years (None: 'unknown')."""
  if age is None or age != age:  # None or NaN.
    return UNKNOWN_AGE_BAND
  for name, low, high in AGE_BANDS:
    if low <= age < high:
      return name
  return UNKNOWN_AGE_BAND  # Negative ages never pass ingestion.


LAYOUTS = ('ham10000', 'isic2019', 'folders', 'csv')
# The files a layout's archive is read from (ingestion reads them, the
# demo-data generator writes them).
HAM10000_CSV = 'HAM10000_metadata.csv'
ISIC2019_GROUND_TRUTH = 'ISIC_2019_Training_GroundTruth.csv'
ISIC2019_METADATA = 'ISIC_2019_Training_Metadata.csv'
GENERIC_CSV = 'labels.csv'

# Source label -> canonical label, per layout (a Settings.label_map replaces
# the layout's default).  ISIC 2019's SCC and UNK have no HAM10000 class:
# they are quarantined as unknown labels unless the label list gains them.
DEFAULT_LABEL_MAPS: Dict[str, Dict[str, str]] = {
    'isic2019': {'MEL': 'mel', 'NV': 'nv', 'BCC': 'bcc', 'AK': 'akiec',
                 'BKL': 'bkl', 'DF': 'df', 'VASC': 'vasc'},
}


# Patient metadata the ``mixed_input`` model reads (models/registry.py):
# one-hot vocabularies, each with one extra bucket for any other value
# (including 'unknown'), and the age scale (HAM10000 ages are 0-85; a
# missing age is a separate indicator input, never a silent zero).
SEX_VOCABULARY: Tuple[str, ...] = ('female', 'male')
LOCALIZATION_VOCABULARY: Tuple[str, ...] = (
    # HAM10000
    'abdomen', 'acral', 'back', 'chest', 'ear', 'face', 'foot', 'genital',
    'hand', 'lower extremity', 'neck', 'scalp', 'trunk', 'upper extremity',
    # ISIC 2019 anatom_site_general
    'anterior torso', 'head/neck', 'lateral torso', 'oral/genital',
    'palms/soles', 'posterior torso')
AGE_SCALE = 100.0

# The Trainer's calibration choices (models/calibration.py fits them,
# models/trainer.py applies them; Settings validates them).
CALIBRATION_METHODS: Tuple[str, ...] = ('temperature', 'none')
PRIOR_CORRECTIONS: Tuple[str, ...] = ('none', 'balanced')
