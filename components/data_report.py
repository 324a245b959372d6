"""DataReport: the exploratory charts of reference R1, from TFDV statistics.

Four PNG charts, each with one series per split: images per class, per sex,
per body site, and the age histogram.  They are drawn from the statistics
artifact (no second pass over the images) and written into a ``DataCharts``
artifact for the run report.
"""

import os
from typing import Dict, List, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position
import tensorflow_data_validation as tfdv  # pylint: disable=wrong-import-position
from tfx import types  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.annotations import InputArtifact  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.annotations import OutputArtifact  # pylint: disable=wrong-import-position
from tfx.dsl.component.experimental.decorators import component  # pylint: disable=wrong-import-position
from tfx.types import artifact_utils  # pylint: disable=wrong-import-position
from tfx.types import standard_artifacts  # pylint: disable=wrong-import-position

from components.run_report import readers  # pylint: disable=wrong-import-position
from models import features  # pylint: disable=wrong-import-position
from models import preprocessing  # pylint: disable=wrong-import-position

CHARTS = {
    'class_counts.png': 'Images per class',
    'sex_counts.png': 'Images per sex',
    'site_counts.png': 'Images per body site',
    'age_histogram.png': 'Age distribution',
}


class DataCharts(types.Artifact):
  """PNG charts describing a dataset (one file per chart)."""
  TYPE_NAME = 'components.DataCharts'


# value -> count of a categorical feature; the run report reads the same.
category_counts = readers.statistics_category_counts


def age_histogram(stats, name: str = features.AGE_KEY
                  ) -> Tuple[List[Tuple[float, float]], List[float], float]:
  """([(low, high)], [count], missing count) of the standard histogram;
  no buckets and every example missing when no example has a value."""
  feature = readers.feature_statistics(stats, name)
  if feature is None:
    return [], [], float(stats.datasets[0].num_examples)
  numeric = feature.num_stats
  standard = [h for h in numeric.histograms
              if h.type == h.HistogramType.STANDARD]
  buckets = standard[0].buckets if standard else []
  return ([(b.low_value, b.high_value) for b in buckets],
          [b.sample_count for b in buckets],
          float(numeric.common_stats.num_missing))


def _bar_chart(path: str, title: str, categories: Sequence[str],
               series: Dict[str, Sequence[float]]) -> None:
  fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(categories) + 2), 4))
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(categories))
  for i, (split, values) in enumerate(series.items()):
    ax.bar(x + i * width - 0.4 + width / 2, values, width, label=split)
  ax.set_xticks(x)
  ax.set_xticklabels(categories, rotation=40, ha='right')
  ax.set_ylabel('images')
  ax.set_title(title)
  ax.legend(title='split')
  fig.tight_layout()
  with tf.io.gfile.GFile(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=90)
  plt.close(fig)


def render(statistics: types.Artifact, labels: Sequence[str],
           out_dir: str) -> List[str]:
  """Writes the four charts; returns their paths."""
  splits = artifact_utils.decode_split_names(statistics.split_names)
  stats = {s: tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([statistics], s), 'FeatureStats.pb'))
           for s in splits}
  tf.io.gfile.makedirs(out_dir)

  by_split = {s: category_counts(st, features.LABEL_KEY)
              for s, st in stats.items()}
  _bar_chart(os.path.join(out_dir, 'class_counts.png'),
             CHARTS['class_counts.png'], labels,
             {s: [c.get(str(i), 0) for i in range(len(labels))]
              for s, c in by_split.items()})
  for key, name in ((features.SEX_KEY, 'sex_counts.png'),
                    (features.LOCALIZATION_KEY, 'site_counts.png')):
    by_split = {s: category_counts(st, key) for s, st in stats.items()}
    values = sorted({v for c in by_split.values() for v in c})
    _bar_chart(os.path.join(out_dir, name), CHARTS[name], values,
               {s: [c.get(v, 0) for v in values] for s, c in by_split.items()})
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn = False
  for split, st in stats.items():
    edges, counts, missing = age_histogram(st)
    if edges:
      ax.stairs(counts, [e[0] for e in edges] + [edges[-1][1]],
                label=f'{split} ({missing:.0f} missing)')
      drawn = True
  if not drawn:
    ax.text(0.5, 0.5, 'No image has an age (the archive records none).',
            ha='center', va='center', transform=ax.transAxes)
  ax.set_xlabel('age (years)')
  ax.set_ylabel('images')
  ax.set_title(CHARTS['age_histogram.png'])
  if drawn:
    ax.legend(title='split')
  fig.tight_layout()
  with tf.io.gfile.GFile(os.path.join(out_dir, 'age_histogram.png'), 'wb') as f:
    fig.savefig(f, format='png', dpi=90)
  plt.close(fig)
  return [os.path.join(out_dir, name) for name in CHARTS]


@component
def DataReport(statistics: InputArtifact[standard_artifacts.ExampleStatistics],
               examples: InputArtifact[standard_artifacts.Examples],
               charts: OutputArtifact[DataCharts]) -> None:
  """Renders R1's exploratory charts (per split) as PNG files."""
  split = artifact_utils.decode_split_names(examples.split_names)[0]
  labels = preprocessing.read_labels(
      [os.path.join(artifact_utils.get_split_uri([examples], split), '*')])
  render(statistics, labels, charts.uri)
