"""The tf.Example contract shared by ingestion, training, evaluation and export.

Every component reads feature keys from here; nothing else spells them out.
The label list is a pipeline setting (``pipeline/configs.py``; the named sets
are in ``models/domain.py``) and reaches the
code that needs it as a parameter, so a dataset with other classes needs no
code change.
"""

IMAGE_KEY = 'image'          # bytes: encoded JPEG
LABEL_KEY = 'label'          # int64: index into the pipeline's label list
IMAGE_ID_KEY = 'image_id'    # bytes
LESION_ID_KEY = 'lesion_id'  # bytes: split groups; an image without one is its own group
AGE_KEY = 'age'              # float, may be missing
SEX_KEY = 'sex'              # bytes: male | female | unknown
LOCALIZATION_KEY = 'localization'  # bytes: anatomical site or 'unknown'
DATASET_KEY = 'dataset'      # bytes: acquisition source
AGE_BAND_KEY = 'age_band'    # bytes: models/domain.AGE_BAND_NAMES (derived from age)

# What mixed_input reads besides the image (its serving_images inputs too).
METADATA_KEYS = (AGE_KEY, SEX_KEY, LOCALIZATION_KEY)

STRING_FEATURES = (IMAGE_ID_KEY, LESION_ID_KEY, SEX_KEY, LOCALIZATION_KEY,
                   DATASET_KEY)

# Names of the serving signatures written by the Trainer.
EXAMPLE_SIGNATURE = 'serving_default'   # serialized tf.Example -> probabilities
IMAGE_SIGNATURE = 'serving_images'      # float32 [N, H, W, 3] in [0, 1] -> probabilities
# With test-time augmentation (models/tta.py) the two above average over the
# views; this one, then also written, is the plain model on the images (what
# the TFLite files are converted from and compared with).
SINGLE_VIEW_IMAGE_SIGNATURE = 'serving_images_single_view'
# Models with metadata only: images as above and the encoded metadata
# (models/metadata_vector.py) -> probabilities; the .tflite files' source.
METADATA_VECTOR_SIGNATURE = 'serving_images_metadata_vector'
METADATA_VECTOR_KEY = 'metadata'        # float32 [N, metadata_vector.SIZE]
# Models with metadata only: images alone -> probabilities with every
# metadata value missing (metadata_vector.MISSING): the source of the
# image-only .tflite files pushed beside the metadata ones, which the Task
# Library / MediaPipe image classifiers load (one image input).
IMAGE_ONLY_SIGNATURE = 'serving_images_without_metadata'
# Their formats are the .tflite formats with this prefix (image_only_int8).
IMAGE_ONLY_FORMAT_PREFIX = 'image_only_'
PREDICTION_KEY = 'probabilities'

UNKNOWN = 'unknown'


def single_view_image_signature(signature_names) -> str:
  """The raw-image signature of one view among a SavedModel's signature
  names: SINGLE_VIEW_IMAGE_SIGNATURE when it has one (test-time
  augmentation on), else IMAGE_SIGNATURE."""
  return (SINGLE_VIEW_IMAGE_SIGNATURE
          if SINGLE_VIEW_IMAGE_SIGNATURE in signature_names
          else IMAGE_SIGNATURE)

# Written by ingestion into the Examples artifact: the label list the int64
# labels index, one name per line.  Readers find it beside the Split-* dirs.
LABELS_FILE = 'labels.txt'
