"""Every setting of the skin-lesion pipeline, in one place.

Values here are the defaults; the ones a user changes per run (data, layout,
output home, a few training knobs) can also be set through ``SKINLESION_*``
environment variables, which is how the TFX CLI (which runs
``local_runner.py`` as a script) and the project CLI (``skinlesion run``) pass
them.  ``Settings.from_env()`` reads them; components receive plain values.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

PIPELINE_NAME = 'skin-lesion-tfx'

# Repository root: defaults for data and outputs live beside the code.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

LAYOUTS = ('ham10000', 'isic2019', 'folders', 'csv')

# Source label -> canonical label, per layout (a Settings.label_map replaces
# the layout's default).  ISIC 2019's SCC and UNK have no HAM10000 class:
# they are quarantined as unknown labels unless the label list gains them.
DEFAULT_LABEL_MAPS: Dict[str, Dict[str, str]] = {
    'isic2019': {'MEL': 'mel', 'NV': 'nv', 'BCC': 'bcc', 'AK': 'akiec',
                 'BKL': 'bkl', 'DF': 'df', 'VASC': 'vasc'},
}

# Ingestion limits.
MAX_IMAGE_PIXELS = 50_000_000   # Larger images are quarantined (bombs).

# The curated schema (kept in the repository, not re-inferred per run).  Its
# label domain must match the label list; see pipeline.check_schema_labels.
SCHEMA_PATH = os.path.join(PROJECT_ROOT, 'pipeline', 'schema', 'schema.pbtxt')

# Lesion-disjoint splits: hash buckets of lesion_id (ratios 70 / 15 / 15).
# train fits the model, eval drives early stopping, test is only seen by the
# Evaluator.
SPLIT_BUCKETS: Dict[str, int] = {'train': 14, 'eval': 3, 'test': 3}
TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT = 'train', 'eval', 'test'

# Beam: in-process, one worker: the fastest for local archives of this size.
BEAM_PIPELINE_ARGS: List[str] = [
    '--direct_running_mode=in_memory',
    '--direct_num_workers=1',
]

# Mobile export (issue 6): the .tflite formats converted from the blessed
# model (mobile_export/tflite.py; each is pushed only if it passes the parity
# gate, whose bounds are Settings fields below) and their metadata.
TFLITE_FORMATS: Tuple[str, ...] = ('float16', 'int8')
MODEL_AUTHOR = 'skin-lesion-tfx'
MODEL_LICENSE = 'Apache-2.0 (code); model weights inherit the training data licence'


@dataclasses.dataclass
class Settings:
  """Per-run settings; defaults suit `make demo` on 2 CPU cores."""
  data_root: str = os.path.join(PROJECT_ROOT, 'demo_data')
  layout: str = 'ham10000'
  home: str = os.path.join(PROJECT_ROOT, 'tfx_home')
  pipeline_name: str = PIPELINE_NAME
  labels: Tuple[str, ...] = LABELS
  # Source label -> canonical label; empty: the layout's default map.
  label_map: Dict[str, str] = dataclasses.field(default_factory=dict)
  # Ingestion: the run fails when more than this share is quarantined.
  max_quarantine_fraction: float = 0.05
  # Lesion-disjoint splits: split -> hash buckets (relative size).
  split_buckets: Dict[str, int] = dataclasses.field(
      default_factory=lambda: dict(SPLIT_BUCKETS))
  # Fail when a class has no example in some split (a class with too few
  # lesions cannot be evaluated); off only for toy data.
  require_every_class_in_every_split: bool = True
  # Spans: e.g. 'span-{SPAN}' when each delivery is a folder of the data root
  # (data_root/span-1/, span-2/, ...); empty: the data root is one archive.
  span_folder: str = ''
  schema_path: str = SCHEMA_PATH
  # Drift against the previous validated span: L-infinity distance of the
  # label / sex / localization distributions, Jensen-Shannon divergence of
  # the age distribution.
  max_categorical_drift: float = 0.15
  max_age_drift: float = 0.15
  # Trainer.
  model: str = 'cnn_baseline'
  image_size: int = 64
  batch_size: int = 32
  epochs: int = 30
  learning_rate: float = 2e-3
  width: float = 0.5          # filter multiplier of the CNN baseline
  class_weights: bool = True
  early_stopping_patience: int = 8
  seed: int = 42
  # Blessing: balanced accuracy (mean per-class recall) of the candidate on
  # the test split must reach this value ...
  min_balanced_accuracy: float = 0.35
  # ... and may not fall more than this below the latest blessed model's.
  max_balanced_accuracy_drop: float = 0.05
  # Mobile export: int8 calibration images (a seeded sample of the train
  # split); the parity gate on the test split: each .tflite must agree with
  # the SavedModel's top-1 on at least this share of images ...
  tflite_representative_examples: int = 200
  tflite_min_top1_agreement: float = 0.98
  # ... and lose at most this much balanced accuracy (0.01 = 1 point).
  tflite_max_balanced_accuracy_drop: float = 0.01
  beam_pipeline_args: List[str] = dataclasses.field(
      default_factory=lambda: list(BEAM_PIPELINE_ARGS))
  enable_cache: bool = True

  @property
  def effective_label_map(self) -> Dict[str, str]:
    return dict(self.label_map or DEFAULT_LABEL_MAPS.get(self.layout, {}))

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.home, 'pipelines', self.pipeline_name)

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.home, 'metadata', self.pipeline_name,
                        'metadata.db')

  @property
  def serving_model_dir(self) -> str:
    return os.path.join(self.home, 'serving_model', self.pipeline_name)

  def trainer_config(self) -> Dict:
    """What the Trainer's run_fn receives as custom_config."""
    return {
        'model': self.model,
        'image_size': self.image_size,
        'batch_size': self.batch_size,
        'epochs': self.epochs,
        'learning_rate': self.learning_rate,
        'width': self.width,
        'class_weights': self.class_weights,
        'early_stopping_patience': self.early_stopping_patience,
        'seed': self.seed,
    }

  def __post_init__(self):
    # Local paths become absolute: Beam workers and the TFX CLI's child
    # process may run elsewhere.  URIs (gs://, s3://) stay as given.
    for name in ('data_root', 'home', 'schema_path'):
      value = getattr(self, name)
      if '://' not in value:
        setattr(self, name, os.path.abspath(os.path.expanduser(value)))
    self.labels = tuple(self.labels)

  def validate(self) -> None:
    if self.layout not in LAYOUTS:
      raise ValueError(f'layout must be one of {LAYOUTS}, got {self.layout!r}')
    missing = {TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT} - set(self.split_buckets)
    if missing or min(self.split_buckets.values()) < 1:
      raise ValueError(f'split_buckets needs positive buckets for train, eval '
                       f'and test: {self.split_buckets}')
    if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
      raise ValueError(f'labels must be >= 2 distinct names: {self.labels}')
    if not os.path.isdir(self.data_root):
      raise FileNotFoundError(
          f'data root {self.data_root!r} does not exist; generate demo data '
          'with `skinlesion demo-data DIR` or point --data at an archive')

  @classmethod
  def from_env(cls, environ: Optional[Dict[str, str]] = None,
               **overrides) -> 'Settings':
    """Defaults, then SKINLESION_* variables, then explicit overrides."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in dataclasses.fields(cls):
      raw = environ.get('SKINLESION_' + field.name.upper())
      if raw is None:
        continue
      if field.type in ('int', int):
        values[field.name] = int(raw)
      elif field.type in ('float', float):
        values[field.name] = float(raw)
      elif field.type in ('bool', bool):
        values[field.name] = raw.lower() in ('1', 'true', 'yes')
      elif field.name == 'labels':
        values[field.name] = tuple(x.strip() for x in raw.split(',') if x.strip())
      elif field.name == 'beam_pipeline_args':
        values[field.name] = raw.split()
      elif field.name in ('label_map', 'split_buckets'):
        values[field.name] = json.loads(raw) if raw.strip() else {}
      else:
        values[field.name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)

  def to_env(self) -> Dict[str, str]:
    """The inverse of from_env, for running local_runner.py as a child."""
    env = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name == 'labels':
        value = ','.join(value)
      elif field.name == 'beam_pipeline_args':
        value = ' '.join(value)
      elif field.name in ('label_map', 'split_buckets'):
        value = json.dumps(value)
      env['SKINLESION_' + field.name.upper()] = str(value)
    return env
