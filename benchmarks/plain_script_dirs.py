"""The plain script's TRAIN_DIR and TEST_DIR from a pipeline run's splits.

``../shared/anchors/plain_transfer_learning.py TRAIN_DIR TEST_DIR`` takes
HAM10000-layout folders.  To compare it with the pipeline on the same
images, this writes, under ``--out``:

* ``train/``: the run's train and eval images (the script holds out its own
  lesion-disjoint validation part of them, as the pipeline holds out eval);
* ``test/``: the run's test images (same lesions, same images);

each with ``HAM10000_metadata.csv`` (the archive's rows of those images) and
symbolic links to the archive's image files (nothing is copied).

  .venv/bin/python benchmarks/plain_script_dirs.py --examples E \\
      --data ../shared/data/ham10000 --out /tmp/plain
"""

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from components.image_example_gen import layouts  # pylint: disable=g-import-not-at-top
from models import domain  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top

GROUPS = {'train': ('train', 'eval'), 'test': ('test',)}


def split_image_ids(examples: str, split: str):
  """The image ids of one split of an Examples artifact, in file order."""
  spec = {features.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string)}
  ids = []
  files = [os.path.join(examples, f'Split-{split}', '*')]
  for batch in preprocessing.read_examples(files).batch(256):
    ids.extend(i.decode() for i in
               tf.io.parse_example(batch, spec)[features.IMAGE_ID_KEY].numpy())
  return ids


def write_dirs(examples: str, data: str, out: str):
  """{group: image count}; raises if an image id has no file or CSV row."""
  metadata = os.path.join(data, domain.HAM10000_CSV)
  with open(metadata, newline='') as f:
    reader = csv.DictReader(f)
    fields = reader.fieldnames
    rows = {row['image_id']: row for row in reader}
  # The image files ingestion itself reads for these rows.
  images = {record['image_id']: record['path'] for record in
            layouts.list_archive(data, 'ham10000', domain.LABELS).records}
  counts = {}
  for group, splits in GROUPS.items():
    ids = [i for split in splits for i in split_image_ids(examples, split)]
    missing = [i for i in ids if i not in rows or i not in images]
    if missing:
      raise ValueError(f'{len(missing)} image ids of {splits} are not in '
                       f'{data} (first: {missing[:3]})')
    folder = os.path.join(out, group)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, domain.HAM10000_CSV), 'w',
              newline='') as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows(rows[i] for i in ids)
    for i in ids:
      link = os.path.join(folder, i + '.jpg')
      if not os.path.lexists(link):
        os.symlink(os.path.abspath(images[i]), link)
    counts[group] = len(ids)
  return counts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', required=True)
  parser.add_argument('--data', required=True, help='the HAM10000 archive')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  print(write_dirs(args.examples, args.data, args.out))


if __name__ == '__main__':
  main()
