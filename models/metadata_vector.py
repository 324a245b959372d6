"""The numeric patient-metadata vector: ``mixed_input``'s encoded metadata.

``mixed_input`` (models/registry.py) reads raw metadata -- age in years (NaN:
missing), sex and localization strings -- and encodes them inside the model
(age features and string lookups) into one float32 vector of SIZE slots,
the output of its ``metadata`` layer, which the metadata MLP reads.  The
SavedModel's ``serving_images_metadata_vector`` signature and the .tflite
files start from that vector, so an app without string ops feeds it
directly.  This module is the one definition of its layout; the model's
encoder, the .tflite metadata, the parity gate, ``skinlesion predict
--tflite`` and docs/android.md read it from here (tests/models pin the
model's encoder to ``encode``).

Layout (``SLOTS``, in order):
  * 0: age / AGE_SCALE (0 when the age is missing);
  * 1: age missing (1 or 0);
  * then sex one-hot: first slot 'other or unknown' (any value not in the
    vocabulary, 'unknown' and a missing sex included), then one slot per
    domain.SEX_VOCABULARY value;
  * then localization one-hot, the same way over
    domain.LOCALIZATION_VOCABULARY.
Strings match exactly (case-sensitive), as the model's StringLookup layers
do.  This module imports only NumPy and models/domain.py.
"""

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from models import domain

AGE_SCALE = domain.AGE_SCALE
SEX_VOCABULARY = domain.SEX_VOCABULARY
LOCALIZATION_VOCABULARY = domain.LOCALIZATION_VOCABULARY
OTHER = 'other or unknown'

AGE_SLOT = 0
AGE_MISSING_SLOT = 1
SEX_OFFSET = 2
LOCALIZATION_OFFSET = SEX_OFFSET + 1 + len(SEX_VOCABULARY)


def _one_hot_slots(field: str, vocabulary: Sequence[str]
                   ) -> Tuple[Tuple[str, str], ...]:
  return ((f'{field}={OTHER}',
           f'1 when {field} is none of the values below (unknown, missing '
           'or any other), else 0'),) + tuple(
               (f'{field}={value}', f'1 when {field} is {value!r}, else 0')
               for value in vocabulary)


# (slot name, meaning), in vector order.
SLOTS: Tuple[Tuple[str, str], ...] = (
    (f'age/{AGE_SCALE:g}',
     f'age in years / {AGE_SCALE:g}; 0 when the age is missing'),
    ('age_missing', '1 when the age is missing, else 0'),
) + _one_hot_slots('sex', SEX_VOCABULARY) + _one_hot_slots(
    'localization', LOCALIZATION_VOCABULARY)
SIZE = len(SLOTS)
assert LOCALIZATION_OFFSET + 1 + len(LOCALIZATION_VOCABULARY) == SIZE

Text = Union[str, bytes, None]


def _text(value: Text) -> str:
  if value is None:
    return ''
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _is_missing(age: Optional[float]) -> bool:
  return age is None or math.isnan(float(age))


def encode_batch(ages: Sequence[Optional[float]], sexes: Sequence[Text],
                 localizations: Sequence[Text]) -> np.ndarray:
  """Raw metadata of N images -> float32 [N, SIZE] vectors (``SLOTS``).

  Args:
    ages: ages in years; None or NaN: missing.
    sexes: sex strings (str or UTF-8 bytes); None, 'unknown' or any value
      outside SEX_VOCABULARY goes to the 'other or unknown' slot.
    localizations: anatomical sites, the same way over
      LOCALIZATION_VOCABULARY.

  Returns:
    What the model's ``metadata`` layer computes from the same raw inputs.
  """
  if not len(ages) == len(sexes) == len(localizations):
    raise ValueError(f'{len(ages)} ages, {len(sexes)} sexes and '
                     f'{len(localizations)} localizations')
  out = np.zeros((len(ages), SIZE), np.float32)
  for row, (age, sex, site) in enumerate(zip(ages, sexes, localizations)):
    if _is_missing(age):
      out[row, AGE_MISSING_SLOT] = 1.0
    else:
      out[row, AGE_SLOT] = np.float32(age) / np.float32(AGE_SCALE)
    for offset, vocabulary, value in (
        (SEX_OFFSET, SEX_VOCABULARY, _text(sex)),
        (LOCALIZATION_OFFSET, LOCALIZATION_VOCABULARY, _text(site))):
      index = vocabulary.index(value) + 1 if value in vocabulary else 0
      out[row, offset + index] = 1.0
  return out


def encode(age: Optional[float], sex: Text, localization: Text) -> np.ndarray:
  """One image's raw metadata -> float32 [SIZE] (see ``encode_batch``)."""
  return encode_batch([age], [sex], [localization])[0]


# The vector of an image whose metadata are all missing (no age, sex and
# site unknown): what the image-only signature and .tflite files feed the
# model (models/export.py), and what ``metadata_dropout`` trains it on.
MISSING = encode(None, None, None)
MISSING.setflags(write=False)


def describe() -> str:
  """The layout slot by slot ('0: ...; 1: ...'), for metadata and docs."""
  return '; '.join(f'{i}: {name} ({meaning})'
                   for i, (name, meaning) in enumerate(SLOTS))
