"""Settings: defaults, environment overrides, validation."""

import os

import pytest

from pipeline import configs


def test_defaults_are_the_single_label_list():
  settings = configs.Settings()
  assert settings.labels == configs.LABELS
  assert 'labels' not in settings.trainer_config()  # Read from the data.
  assert set(configs.LABEL_DISPLAY_NAMES) == set(configs.LABELS)
  assert configs.MELANOMA_LABEL in configs.LABELS


def test_environment_round_trip(tmp_path):
  settings = configs.Settings(
      data_root=str(tmp_path), home=str(tmp_path / 'h'), epochs=3,
      learning_rate=0.01, imbalance='focal_loss', labels=('a', 'b'),
      beam_pipeline_args=['--x=1', '--y=2'])
  again = configs.Settings.from_env(settings.to_env())
  assert again == settings


def test_explicit_overrides_beat_environment(tmp_path):
  env = {'SKINLESION_EPOCHS': '7', 'SKINLESION_LAYOUT': 'folders'}
  settings = configs.Settings.from_env(env, epochs=2, layout=None)
  assert settings.epochs == 2 and settings.layout == 'folders'


def test_local_paths_become_absolute():
  settings = configs.Settings(data_root='rel/data', home='gs://bucket/home')
  assert settings.data_root == os.path.abspath('rel/data')
  assert settings.home == 'gs://bucket/home'
  assert settings.metadata_path.endswith('metadata.db')


def test_validate_rejects_bad_settings(tmp_path):
  with pytest.raises(ValueError, match='layout'):
    configs.Settings(data_root=str(tmp_path), layout='zip').validate()
  with pytest.raises(ValueError, match='labels'):
    configs.Settings(data_root=str(tmp_path), labels=('a', 'a')).validate()
  with pytest.raises(FileNotFoundError, match='demo-data'):
    configs.Settings(data_root=str(tmp_path / 'missing')).validate()
  # A URI is checked where it is read (a cluster, the ingestion step).
  configs.Settings(data_root='gs://bucket/archive').validate()


def test_serving_dir_overrides_the_home_default(tmp_path):
  settings = configs.Settings(home=str(tmp_path))
  assert settings.serving_model_dir == str(
      tmp_path / 'serving_model' / configs.PIPELINE_NAME)
  settings = configs.Settings(home=str(tmp_path), serving_dir='rel/serving')
  assert settings.serving_model_dir == os.path.abspath('rel/serving')
  settings = configs.Settings(serving_dir='gs://b/s')
  assert settings.serving_model_dir == 'gs://b/s'


def test_age_bands_and_the_schema_agree():
  import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top

  assert [configs.age_band(a) for a in
          (None, float('nan'), 0, 29.9, 30, 44, 45, 59.5, 60, 74, 75, 110)] == [
              'unknown', 'unknown', '<30', '<30', '30-44', '30-44', '45-59',
              '45-59', '60-74', '60-74', '>=75', '>=75']
  schema = tfdv.load_schema_text(configs.SCHEMA_PATH)
  domain = tfdv.get_domain(schema, 'age_band')
  assert tuple(domain.value) == configs.AGE_BAND_NAMES


def test_isic_columns_cover_the_labels_once():

  assert set(configs.ISIC2018_COLUMNS) == set(configs.LABELS)
  assert sorted(configs.ISIC2018_COLUMNS.values()) == sorted(
      configs.ISIC2018_COLUMN_ORDER)
