"""The encoded metadata vector: its layout, and the model's encoder is it."""

import keras
import numpy as np
import pytest

from models import domain
from models import metadata_vector
from models import registry


def test_layout_is_age_then_sex_then_localization_with_other_slots():
  k = 2 + (1 + len(domain.SEX_VOCABULARY)) + (
      1 + len(domain.LOCALIZATION_VOCABULARY))
  assert metadata_vector.SIZE == len(metadata_vector.SLOTS) == k == 26
  names = [name for name, _ in metadata_vector.SLOTS]
  assert names[:5] == ['age/100', 'age_missing', 'sex=other or unknown',
                       'sex=female', 'sex=male']
  assert names[5] == 'localization=other or unknown'
  assert names[6:] == [f'localization={v}'
                       for v in domain.LOCALIZATION_VOCABULARY]
  assert metadata_vector.describe().startswith('0: age/100 (')
  assert '25: localization=posterior torso' in metadata_vector.describe()


def test_encode_known_values():
  v = metadata_vector.encode(45.0, 'female', 'back')
  expected = np.zeros(metadata_vector.SIZE, np.float32)
  expected[0] = 0.45
  expected[3] = 1.0                    # sex=female
  expected[6 + domain.LOCALIZATION_VOCABULARY.index('back')] = 1.0
  np.testing.assert_array_equal(v, expected)
  assert v.dtype == np.float32


@pytest.mark.parametrize('age', [None, float('nan')])
def test_missing_age_sets_the_flag_and_a_zero_age(age):
  v = metadata_vector.encode(age, b'male', b'face')
  assert v[metadata_vector.AGE_SLOT] == 0.0
  assert v[metadata_vector.AGE_MISSING_SLOT] == 1.0
  assert v[4] == 1.0  # bytes match as their UTF-8 text


@pytest.mark.parametrize('sex,site', [('unknown', 'unknown'), (None, None),
                                      ('Male', 'kneecap'), ('', 'Back')])
def test_unknown_and_out_of_vocabulary_values_go_to_the_other_slots(sex, site):
  v = metadata_vector.encode(30.0, sex, site)
  sex_slots = v[metadata_vector.SEX_OFFSET:metadata_vector.LOCALIZATION_OFFSET]
  site_slots = v[metadata_vector.LOCALIZATION_OFFSET:]
  np.testing.assert_array_equal(sex_slots, [1, 0, 0])
  assert site_slots[0] == 1 and site_slots[1:].sum() == 0
  assert v[metadata_vector.AGE_MISSING_SLOT] == 0.0


def test_encode_batch_checks_lengths():
  with pytest.raises(ValueError, match='2 ages, 1 sexes'):
    metadata_vector.encode_batch([1.0, 2.0], ['male'], ['back'])


def test_the_models_encoder_computes_encode_batch():
  model = registry.build('mixed_input', num_classes=7, image_size=32,
                         backbone='cnn_baseline', width=0.25)
  encoder = keras.Model(
      model.input, model.get_layer(registry.METADATA_VECTOR_LAYER).output)
  ages = [0.0, 17.5, 85.0, float('nan'), 120.0, 40.0]
  sexes = ['female', 'male', 'unknown', 'Male', 'male', '']
  sites = ['abdomen', 'posterior torso', 'kneecap', 'unknown', 'head/neck',
           'lower extremity']
  encoded = encoder({
      'image': np.zeros((6, 32, 32, 3), np.float32),
      'age': np.asarray(ages, np.float32)[:, None],
      'sex': np.asarray(sexes)[:, None],
      'localization': np.asarray(sites)[:, None]})
  np.testing.assert_allclose(
      np.asarray(encoded), metadata_vector.encode_batch(ages, sexes, sites),
      atol=1e-7)


def test_metadata_vector_model_shares_the_layers_and_checks_the_size():
  model = registry.build('mixed_input', num_classes=7, image_size=32,
                         backbone='cnn_baseline', width=0.25)
  numeric = registry.metadata_vector_model(model)
  assert numeric.inputs[1].shape[-1] == metadata_vector.SIZE
  assert numeric.get_layer(registry.OUTPUT_LAYER) is model.get_layer(
      registry.OUTPUT_LAYER)
  with pytest.raises(ValueError):
    registry.metadata_vector_model(
        registry.build('cnn_baseline', num_classes=7, image_size=32))
