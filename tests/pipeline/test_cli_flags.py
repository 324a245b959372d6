"""`skinlesion` flags derived from the Settings fields declared with
configs.cli_flag (one place per setting)."""

import argparse
import dataclasses

import pytest

from pipeline import cli
from pipeline import configs

# A value other than the default for every flag of `run`, all accepted
# together (logit adjustment needs --imbalance none).
RUN_VALUES = {
    'layout': 'isic2019', 'pipeline_name': 'other', 'max_quarantine_fraction':
    0.2, 'span_folder': 'span-{SPAN}', 'model': 'mobilenet_v2',
    'weights': 'none', 'alpha': 0.5, 'backbone': 'efficientnet_lite0',
    'image_size': 96, 'batch_size': 8, 'epochs': 3, 'learning_rate': 0.01,
    'fine_tune_epochs': 2, 'imbalance': 'none', 'logit_adjustment_tau': 1.0,
    'label_smoothing': 0.1, 'ema_momentum': 0.99, 'lr_schedule': 'cosine',
    'warmup_epochs': 0.5,
    'int8_weight_epochs': 2,
    'int8_qat_epochs': 3, 'metadata_dropout': 0.25,
    'tta': 'dihedral', 'color_constancy': 'shades_of_gray', 'tuner_trials': 2,
    'prior_correction': 'balanced',
    'min_balanced_accuracy': 0.6, 'min_melanoma_recall': 0.7,
    'melanoma_label': 'none', 'max_balanced_accuracy_drop': 0.03,
    'max_subgroup_gap': 0.2,
}


def _argv(values):
  argv = []
  for name, value in values.items():
    argv += ['--' + name.replace('_', '-'), str(value)]
  return argv


def _subparser(command):
  parser = cli.build_parser()
  action, = [a for a in parser._actions  # pylint: disable=protected-access
             if isinstance(a, argparse._SubParsersAction)]  # pylint: disable=protected-access
  return action.choices[command]


def test_every_flag_of_run_reaches_its_setting(monkeypatch):
  fields = {f.name for f, _ in configs.cli_fields('run')}
  assert fields == set(RUN_VALUES)  # A new flag needs a value here.
  for name in fields:
    monkeypatch.delenv('SKINLESION_' + name.upper(), raising=False)
  args = cli.build_parser().parse_args(['run', '--data', 'd']
                                       + _argv(RUN_VALUES))
  settings = cli._settings_from(args)  # pylint: disable=protected-access
  defaults = configs.Settings()
  for name, value in RUN_VALUES.items():
    assert getattr(settings, name) == value, name
    assert getattr(defaults, name) != value, name


def test_ingest_and_summary_take_only_their_flags():
  ingest = {f.name for f, _ in configs.cli_fields('ingest')}
  assert ingest == {'layout', 'pipeline_name', 'max_quarantine_fraction',
                    'span_folder', 'melanoma_label'}
  args = cli.build_parser().parse_args(
      ['ingest', '--data', 'd', '--out', 'o']
      + _argv({k: RUN_VALUES[k] for k in ingest}))
  args.home = args.out
  settings = cli._settings_from(args)  # pylint: disable=protected-access
  assert all(getattr(settings, k) == RUN_VALUES[k] for k in ingest)
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['ingest', '--data', 'd', '--out', 'o',
                                   '--epochs', '3'])
  args = cli.build_parser().parse_args(['summary', '--pipeline-name', 'x'])
  assert cli._settings_from(args).pipeline_name == 'x'  # pylint: disable=protected-access


def test_help_states_each_default_and_the_presets_value():
  text = _subparser('run').format_help()
  for field, flag in configs.cli_fields('run'):
    assert '--' + field.name.replace('_', '-') in text, field.name
    assert flag.help.split()[0] in text, field.name
  assert "(default 'cnn_baseline'; --preset real: 'mixed_input')" in ' '.join(
      text.split())
  assert '95% interval' in ' '.join(text.split())  # % survives argparse.


def test_a_choice_flag_refuses_other_values(capsys):
  for field, flag in configs.cli_fields('run'):
    if not flag.choices:
      continue
    with pytest.raises(SystemExit):
      cli.build_parser().parse_args(
          ['run', '--data', 'd', '--' + field.name.replace('_', '-'), 'bogus'])
    assert 'invalid choice' in capsys.readouterr().err


def test_a_flag_beats_the_variable_and_the_preset(monkeypatch):
  monkeypatch.setenv('SKINLESION_IMAGE_SIZE', '80')
  args = cli.build_parser().parse_args(['run', '--data', 'd', '--preset',
                                        'real', '--image-size', '96'])
  assert cli._settings_from(args).image_size == 96  # pylint: disable=protected-access
  args = cli.build_parser().parse_args(['run', '--data', 'd', '--preset',
                                        'real'])
  assert cli._settings_from(args).image_size == 80  # pylint: disable=protected-access
  monkeypatch.delenv('SKINLESION_IMAGE_SIZE')
  assert cli._settings_from(args).image_size == (  # pylint: disable=protected-access
      configs.REAL_DATA_PRESET['image_size'])


def test_flag_types_are_the_fields_types():
  for field, _ in configs.cli_fields('run'):
    action, = [a for a in _subparser('run')._actions  # pylint: disable=protected-access
               if a.dest == field.name]
    assert action.type is {'int': int, 'float': float, 'str': str}.get(
        field.type, field.type), field.name
    assert action.default is None  # Unset: preset / variables / default.
  assert all(isinstance(f.metadata['cli'], configs.CliFlag)
             for f in dataclasses.fields(configs.Settings)
             if 'cli' in f.metadata)
