"""DataReport: R1's charts drawn from real TFDV statistics."""

import os

import pandas as pd
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import data_report
from models import features


def _statistics(tmp_path, frames):
  """An ExampleStatistics artifact with TFDV's statistics of each frame."""
  artifact = standard_artifacts.ExampleStatistics()
  artifact.uri = str(tmp_path / 'statistics')
  artifact.split_names = artifact_utils.encode_split_names(list(frames))
  for split, frame in frames.items():
    directory = artifact_utils.get_split_uri([artifact], split)
    os.makedirs(directory)
    stats = tfdv.generate_statistics_from_dataframe(frame)
    with open(os.path.join(directory, 'FeatureStats.pb'), 'wb') as f:
      f.write(stats.SerializeToString())
  return artifact


def _frame(labels, ages=None):
  frame = {features.LABEL_KEY: labels,
           features.SEX_KEY: ['male', 'female'] * (len(labels) // 2),
           features.LOCALIZATION_KEY: ['back'] * len(labels)}
  if ages is not None:
    frame[features.AGE_KEY] = ages
  return pd.DataFrame(frame)


def test_counts_and_age_histogram_come_from_the_statistics(tmp_path):
  artifact = _statistics(tmp_path, {
      'train': _frame([0, 0, 1, 1], [30.0, 40.0, 50.0, float('nan')])})
  stats = tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([artifact], 'train'), 'FeatureStats.pb'))
  assert data_report.category_counts(stats, features.SEX_KEY) == {
      'male': 2, 'female': 2}
  edges, counts, missing = data_report.age_histogram(stats)
  assert edges and round(sum(counts), 6) == 3 and missing == 1


def test_an_archive_without_ages_still_gets_all_four_charts(tmp_path):
  """A folder archive records no age: TFDV then has no 'age' feature, and
  the report says so instead of failing the run."""
  artifact = _statistics(tmp_path, {'train': _frame([0, 1, 1, 0]),
                                    'eval': _frame([1, 0])})
  stats = tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([artifact], 'eval'), 'FeatureStats.pb'))
  assert data_report.age_histogram(stats) == ([], [], 2.0)
  assert data_report.category_counts(stats, 'no_such_feature') == {}
  paths = data_report.render(artifact, ['Melanoma', 'Tahi Lalat'],
                             str(tmp_path / 'charts'))
  assert [os.path.basename(p) for p in paths] == list(data_report.CHARTS)
  for path in paths:
    assert os.path.getsize(path) > 5000
