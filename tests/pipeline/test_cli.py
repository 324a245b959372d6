"""The `skinlesion` command line (the pipeline run itself is in tests/e2e)."""

import csv
import os

import pytest

from pipeline import cli


def test_demo_data_command(tmp_path, capsys):
  out = str(tmp_path / 'demo')
  assert cli.main(['demo-data', out, '--per-class', '2', '--seed', '5']) == 0
  assert 'Wrote' in capsys.readouterr().out
  with open(os.path.join(out, 'HAM10000_metadata.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(os.listdir(os.path.join(out, 'images')))


def test_run_on_a_missing_folder_fails_clearly(tmp_path, capsys):
  code = cli.main(['run', '--data', str(tmp_path / 'nope'), '--home',
                   str(tmp_path / 'home')])
  assert code == 1
  err = capsys.readouterr().err
  assert 'does not exist' in err and 'demo-data' in err


def test_usage_errors_exit_with_argparse():
  with pytest.raises(SystemExit):
    cli.main(['run'])  # --data is required.


def test_gate_flags_reach_the_settings():
  args = cli.build_parser().parse_args(
      ['run', '--data', 'd', '--min-melanoma-recall', '0.7',
       '--max-subgroup-gap', '0.1'])
  settings = cli._settings_from(args)  # pylint: disable=protected-access
  assert (settings.min_melanoma_recall, settings.max_subgroup_gap) == (0.7,
                                                                       0.1)


def test_run_preset_real_is_below_variables_and_flags(tmp_path, monkeypatch):
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('SKINLESION_FINE_TUNE_LAYERS', '7')
  args = cli.build_parser().parse_args(
      ['run', '--data', str(tmp_path), '--preset', 'real',
       '--weights', '/w.h5', '--imbalance', 'focal_loss'])
  settings = cli._settings_from(args)  # pylint: disable=protected-access
  assert settings.model == configs.REAL_DATA_PRESET['model']
  assert settings.image_size == configs.REAL_DATA_PRESET['image_size']
  assert settings.fine_tune_layers == 7          # the variable wins
  assert (settings.weights, settings.imbalance) == ('/w.h5', 'focal_loss')
  plain = cli._settings_from(cli.build_parser().parse_args(  # pylint: disable=protected-access
      ['run', '--data', str(tmp_path)]))
  assert plain.model == 'cnn_baseline'           # the demo's default
