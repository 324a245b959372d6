"""`skinlesion ingest`: ingestion + validation alone, spans and drift."""

import csv
import json
import os
import shutil
import tempfile

import pytest

from components import image_example_gen as ieg
from pipeline import cli
from pipeline import configs
from pipeline import summary

# Toy data: a class may miss a small split by chance.
TOY_ENV = {'SKINLESION_REQUIRE_EVERY_CLASS_IN_EVERY_SPLIT': 'false'}


@pytest.fixture
def toy_env(monkeypatch):
  for k, v in TOY_ENV.items():
    monkeypatch.setenv(k, v)


def _drop_rows(src, dst, dx, keep_every):
  """Copies an archive, keeping 1 in keep_every rows (and files) of class dx."""
  shutil.copytree(src, dst)
  path = os.path.join(dst, ieg.HAM10000_CSV)
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  kept, seen = [], 0
  for row in rows:
    if row['dx'] == dx:
      seen += 1
      if seen % keep_every:
        os.remove(os.path.join(dst, 'images', row['image_id'] + '.jpg'))
        continue
    kept.append(row)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(kept)
  return len(kept)


def test_new_span_with_shifted_label_mix_stops_on_drift(
    tiny_archive, tmp_path, capsys, toy_env):
  data = tmp_path / 'deliveries'
  shutil.copytree(tiny_archive, data / 'span-1')
  out = str(tmp_path / 'home')
  args = ['ingest', '--data', str(data), '--out', out,
          '--span-folder', 'span-{SPAN}']
  temporary = set(os.listdir(tempfile.gettempdir()))
  assert cli.main(args) == 0
  first = capsys.readouterr().out
  assert 'AnomaliesGate                     COMPLETE' in first
  # The run's temporary files (TFX's sdist of itself for each Beam
  # executor among them) went with it.
  assert set(os.listdir(tempfile.gettempdir())) == temporary

  # Span 2: most nevi are gone, so the label mix shifts.
  _drop_rows(tiny_archive, data / 'span-2', 'nv', keep_every=5)
  assert cli.main(args) == 1
  captured = capsys.readouterr()
  assert 'drift [train] label' in captured.err
  assert 'sex' not in captured.err.split('Anomalies:')[1]
  # Rerunning the drifted span does not make it its own baseline.
  assert cli.main(args) == 1
  assert 'drift [train] label' in capsys.readouterr().err


def test_ingest_prints_counts_and_fails_on_too_much_quarantine(
    tiny_archive, tmp_path, capsys, toy_env):
  data = tmp_path / 'archive'
  shutil.copytree(tiny_archive, data)
  images = sorted(os.listdir(data / 'images'))
  for name in images[:12]:  # 12 of 179 unreadable: 6.7% > 5%.
    with open(data / 'images' / name, 'wb') as f:
      f.write(b'not a jpeg')
  out = str(tmp_path / 'home')
  assert cli.main(['ingest', '--data', str(data), '--out', out]) == 1
  err = capsys.readouterr().err
  assert '12 of 179 inputs (6.7%) were quarantined' in err
  assert ieg.QUARANTINE_FILE in err
  # A looser limit lets the same archive through, with its counts printed.
  assert cli.main(['ingest', '--data', str(data), '--out', out,
                   '--max-quarantine-fraction', '0.1']) == 0
  printed = capsys.readouterr().out
  assert 'Ingested 167 of 179 inputs' in printed
  assert 'Quarantined by reason: corrupt_image 12' in printed
  for name in configs.LABELS:
    assert f'\n{name:<10}' in printed


def test_real_ham10000_ingests_and_validates(shared_ham10000, tmp_path, capsys):
  """All 8,943 real images: counts reconcile, lesion-disjoint, schema pass."""
  out = str(tmp_path / 'home')
  assert cli.main(['ingest', '--data', shared_ham10000, '--out', out]) == 0
  capsys.readouterr()
  run = summary.latest_run(configs.Settings(data_root=shared_ham10000,
                                            home=out))
  assert {c.node_id: c.state for c in run.components}['AnomaliesGate'] == \
      'COMPLETE'
  report = run.ingestion_report()
  with open(os.path.join(shared_ham10000, ieg.HAM10000_CSV)) as f:
    rows = sum(1 for _ in f) - 1
  assert report['input_records'] == rows == 8943
  assert report['examples'] + report['quarantined'] == rows
  assert report['lesions_in_several_splits'] == []
  pairs = [d['image_ids'] for d in report['identical_images_within_a_lesion']]
  assert len(pairs) == 2 and all(len(p) == 2 for p in pairs)
  assert not any(q == ieg.SAME_BYTES_OTHER_LESION
                 for q in report['quarantined_by_reason'])
  assert all(n > 0 for by_class in
             report['examples_per_split_and_class'].values()
             for n in by_class.values())
  for chart in ('class_counts.png', 'sex_counts.png', 'site_counts.png',
                'age_histogram.png'):
    assert os.path.getsize(os.path.join(run.charts_uri, chart)) > 5000


def test_a_span_with_another_label_set_is_a_drift_anomaly(
    tmp_path, capsys, toy_env):
  """--labels auto on a folder archive whose second delivery adds a class:
  the label indices change meaning, so the run stops on a drift anomaly
  naming the class (not a crash, not a model of mixed lists)."""
  from pipeline import demo_data  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'deliveries'
  full = str(tmp_path / 'full')
  demo_data.generate(full, per_class=4, seed=0, layout='folders')
  new_class = 'Psoriasis'
  shutil.copytree(full, data / 'span-1',
                  ignore=lambda d, names: [new_class] if new_class in names
                  else [])
  args = ['ingest', '--data', str(data), '--out', str(tmp_path / 'home'),
          '--layout', 'folders', '--labels', 'auto',
          '--span-folder', 'span-{SPAN}']
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert 'AnomaliesGate                     COMPLETE' in out
  table = [line for line in out.splitlines()
           if line.startswith(('class ', 'Dermatitis Atopik', 'total '))]
  assert len(table) == 3 and len({len(line) for line in table}) == 1, table
  shutil.copytree(full, data / 'span-2')
  assert cli.main(args) == 1
  err = capsys.readouterr().err
  assert 'drift [train] label: Label set changed' in err
  assert f"added ['{new_class}']" in err
