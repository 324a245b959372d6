"""The `skinlesion` command line.

  skinlesion demo-data OUT_DIR [--per-class N] [--seed S] [--layout L]
  skinlesion ingest --data DIR [--layout L] [--out DIR] [--beam flink]
  skinlesion run --data DIR [--layout L] [--home DIR] [--model M]
                 [--beam direct|flink[=HOST:PORT]]
                 [--preset real] [--weights W] [...]
  skinlesion summary [--home DIR]
  skinlesion predict --model PUSHED_DIR --images DIR --out preds.csv
                     [--format labels|isic] [--tflite [FORMAT]]
"""

import argparse
import json
import os
import sys
import time
import warnings
from typing import List, Optional


def _preset(args) -> dict:
  """--preset real: configs.REAL_DATA_PRESET, below SKINLESION_* variables
  and explicit flags."""
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  if getattr(args, 'preset', None) != 'real':
    return {}
  return {k: v for k, v in configs.REAL_DATA_PRESET.items()
          if 'SKINLESION_' + k.upper() not in os.environ}


def _settings_from(args):
  """Settings: defaults < --preset < SKINLESION_* variables < flags."""
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  flags = {field.name: getattr(args, field.name, None)
           for field, _ in configs.cli_fields(args.command)}
  flags.update(
      data_root=getattr(args, 'data', None), home=args.home,
      label_map=(json.loads(args.label_map) if getattr(args, 'label_map', None)
                 else None),
      labels=(tuple(x.strip() for x in args.labels.split(',') if x.strip())
              if getattr(args, 'labels', None) else None),
      enable_cache=False if getattr(args, 'no_cache', False) else None,
      beam_pipeline_args=_beam_args(args))
  overrides = _preset(args)
  overrides.update({k: v for k, v in flags.items() if v is not None})
  return configs.Settings.from_env(**overrides)


def _beam_args(args) -> Optional[List[str]]:
  """--beam / --beam-workers (None: the settings' own, or
  SKINLESION_BEAM_PIPELINE_ARGS)."""
  from pipeline import beam_args  # pylint: disable=g-import-not-at-top
  beam = getattr(args, 'beam', None)
  workers = getattr(args, 'beam_workers', None)
  if workers is not None:
    if beam not in (None, 'direct'):
      raise SystemExit('skinlesion: --beam-workers is for --beam direct')
    return beam_args.direct_beam_args(workers)
  try:
    return beam_args.beam_args_for(beam) if beam else None
  except ValueError as e:
    raise SystemExit(f'skinlesion: {e}') from None


def cmd_demo_data(args) -> int:
  from pipeline import demo_data  # pylint: disable=g-import-not-at-top
  start = time.time()
  counts = demo_data.generate(args.out_dir, per_class=args.per_class,
                              seed=args.seed, layout=args.layout)
  print(f'Wrote {sum(counts.values())} images ({args.layout} layout) to '
        f'{args.out_dir} in '
        f'{time.time() - start:.1f} s: '
        + ', '.join(f'{k} {v}' for k, v in counts.items()))
  return 0


def _run(args, ingest_only: bool) -> int:
  """Runs the (ingest-only or whole) pipeline; prints what it did."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  from pipeline import summary  # pylint: disable=g-import-not-at-top
  settings = _settings_from(args)
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  what = 'Ingesting and validating' if ingest_only else 'Running'
  print(f'{what} {settings.data_root} ({settings.layout}) with '
        f'{settings.pipeline_name}; outputs under {settings.home}', flush=True)
  error = None
  try:
    local_runner.run(settings, ingest_only=ingest_only)
  except local_runner.PipelineBusyError as e:
    # Nothing ran: the latest run in the store is the other process's.
    print(f'\nThe run FAILED: {e}', file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    error = e
  run = None
  try:
    run = summary.latest_run(settings)
    report = run.ingestion_report()
    if report:
      print('\n' + summary.format_ingestion(report))
    if run.charts_uri:
      print(f'Data charts: {run.charts_uri}')
    print('\n' + run.format())
  except (LookupError, FileNotFoundError) as e:
    print(f'(no run summary: {e})')
  if error is None and run is not None and run.failed:
    error = RuntimeError(f'components failed: {", ".join(run.failed)} (see '
                         'the log above; --verbose for details)')
  if error is not None:
    print(f'\nThe run FAILED: {type(error).__name__}: {error}', file=sys.stderr)
    return 1
  return 0


def cmd_run(args) -> int:
  return _run(args, ingest_only=False)


def cmd_ingest(args) -> int:
  args.home = args.out
  return _run(args, ingest_only=True)


def cmd_summary(args) -> int:
  from pipeline import summary  # pylint: disable=g-import-not-at-top
  print(summary.latest_run(_settings_from(args)).format())
  return 0


def _refused(command: str, error: Exception) -> int:
  """Exit status 1, saying why the pushed model could not be used."""
  from mobile_export import release  # pylint: disable=g-import-not-at-top
  if isinstance(error, release.VersionIntegrityError):
    print(f'Refusing the model: {error}', file=sys.stderr)
  else:
    print(f'{command}: {error}', file=sys.stderr)
  return 1


def cmd_predict(args) -> int:
  """Exit 0: every image predicted; 2: some images unreadable (listed);
  1: the model was refused (manifest mismatch) or could not be used."""
  from mobile_export import release  # pylint: disable=g-import-not-at-top
  from pipeline import predict  # pylint: disable=g-import-not-at-top
  from pipeline import metadata_csv  # pylint: disable=g-import-not-at-top
  try:
    table = metadata_csv.read(args.metadata) if args.metadata else None
    images = predict.list_images(args.images)
    result = predict.predict(args.model, images, tflite_format=args.tflite,
                             metadata=table)
  except (release.VersionIntegrityError, FileNotFoundError, ValueError) as e:
    return _refused('predict', e)
  errors_path = predict.write_csv(result, args.out, args.format)
  model = (f'{args.tflite} .tflite' if args.tflite else 'SavedModel')
  print(f'Wrote {len(result.images)} predictions to {args.out} '
        f'({args.format} columns; {model} of {result.version_dir}, manifest '
        'verified).')
  _report_metadata(result, table)
  if result.errors:
    print(f'{len(result.errors)} image(s) could not be read (no row; also '
          f'in {errors_path}):', file=sys.stderr)
    for path, reason, detail in result.errors:
      print(f'  {path}: {reason}: {detail}', file=sys.stderr)
    return 2
  return 0


def _report_metadata(result, table) -> None:
  """How many images got patient metadata, for a model that reads it."""
  if not result.metadata_keys:
    if table is not None:
      print(f'--metadata {table.path}: not used (this model reads the image '
            'only).')
    return
  keys = ', '.join(result.metadata_keys)
  if table is None:
    print(f'This model reads {keys} beside the image: none given (pass '
          '--metadata CSV), so all were fed as missing.')
    return
  given = len(result.images) - len(result.without_metadata)
  print(f'Metadata ({keys}) from {table.path} ({table.layout} columns) for '
        f'{given} of {len(result.images)} images; '
        f'{len(result.without_metadata)} without a row, fed as missing'
        + (': ' + ', '.join(result.without_metadata[:10])
           + (' ...' if len(result.without_metadata) > 10 else '')
           if result.without_metadata else '') + '.')


def cmd_serve(args) -> int:
  """Runs the try-it page until interrupted.  Exit 1: the model was refused
  (manifest mismatch, missing .tflite) or the port could not be bound."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from mobile_export import release  # pylint: disable=g-import-not-at-top
  from pipeline import predict  # pylint: disable=g-import-not-at-top
  from pipeline import serve  # pylint: disable=g-import-not-at-top
  std_logging.basicConfig(level=std_logging.INFO,
                          format='%(asctime)s %(name)s: %(message)s')
  try:
    model = predict.PushedModel(args.model, tflite_format=args.tflite)
  except (release.VersionIntegrityError, FileNotFoundError, ValueError) as e:
    return _refused('serve', e)
  if args.max_upload_mb <= 0:
    print('serve: --max-upload-mb must be positive', file=sys.stderr)
    return 1
  from pipeline import metadata_csv  # pylint: disable=g-import-not-at-top
  try:
    table = metadata_csv.read(args.metadata) if args.metadata else None
  except ValueError as e:
    return _refused('serve', e)
  app = serve.TryIt(model, max_upload_bytes=int(args.max_upload_mb * 2**20),
                    metadata_table=table)
  try:
    server = serve.make_server(app, args.host, args.port)
  except OSError as e:
    print(f'serve: cannot listen on {args.host}:{args.port}: {e}',
          file=sys.stderr)
    return 1
  if args.host not in ('127.0.0.1', 'localhost', '::1'):
    print(f'WARNING: listening on {args.host}: anyone who can reach this '
          'machine can upload images and see the model. Uploads are health '
          'data; prefer localhost and an SSH tunnel.', file=sys.stderr)
  print(f'Serving model version {model.manifest.get("model_version")} '
        f'({model.file}, manifest verified) at {serve.url_of(server)} '
        '(Ctrl-C stops it).', flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0


_FLAG_TYPES = {'int': int, 'float': float, 'str': str, int: int, float: float,
               str: str}


def add_settings_flags(parser: argparse.ArgumentParser, command: str) -> None:
  """The flags of configs.cli_fields(command): --<name-with-dashes>, typed
  by the field, default None (unset: the preset, variables or default
  decide), help ending in the field's default and --preset real value."""
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  for field, flag in configs.cli_fields(command):
    default = f'default {field.default!r}'
    if command == 'run' and field.name in configs.REAL_DATA_PRESET:
      default += f'; --preset real: {configs.REAL_DATA_PRESET[field.name]!r}'
    parser.add_argument(
        '--' + field.name.replace('_', '-'), dest=field.name,
        type=_FLAG_TYPES[field.type], choices=flag.choices,
        help=f'{flag.help} ({default})'.replace('%', '%%'))


def build_parser() -> argparse.ArgumentParser:
  from pipeline import beam_args  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  from pipeline import demo_data  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='skinlesion',
      description='Skin-lesion classification pipeline on TFX.')
  sub = parser.add_subparsers(dest='command', required=True)

  demo = sub.add_parser('demo-data', help='write the synthetic demo dataset')
  demo.add_argument('out_dir')
  demo.add_argument('--per-class', type=int, default=30,
                    help='images of the rarest class (default 30)')
  demo.add_argument('--seed', type=int, default=0)
  demo.add_argument('--layout', default='ham10000',
                    choices=demo_data.LAYOUTS,
                    help="ham10000 (HAM10000's 7 classes, the default), "
                    "isic2019 (ISIC 2019's CSVs, 8 classes with SCC) or "
                    "folders (R4's 10 class folders)")
  demo.set_defaults(func=cmd_demo_data)

  def common(p):
    p.add_argument('--home', help='output folder (pipeline root, metadata, '
                   'serving models); default: ./tfx_home')

  def data_args(p):
    p.add_argument('--data', required=True, help='archive root folder')
    p.add_argument('--label-map', help='JSON: source label -> canonical '
                   'label, e.g. \'{"AK": "akiec"}\'')
    p.add_argument('--labels', help="a named set (%s), a comma list in "
                   "index order, or 'auto': the archive's classes, sorted "
                   "(default: ham10000)" % ', '.join(configs.LABEL_SETS))
    p.add_argument('--verbose', action='store_true', help='TFX INFO logs')
    p.add_argument('--beam', metavar='RUNNER',
                   help='where the Beam stages (ImageExampleGen, '
                   'StatisticsGen, Evaluator) run: direct (default) or '
                   f'flink[=HOST:PORT] (a Flink 1.19 cluster; default '
                   f'{beam_args.FLINK_MASTER}, tools/flink_cluster.sh start)')

  ingest = sub.add_parser(
      'ingest', help='ingest and validate an archive (no training)')
  data_args(ingest)
  add_settings_flags(ingest, 'ingest')
  ingest.add_argument('--out', required=True,
                      help='output folder (the same --home as a later run '
                      'reuses this ingestion)')
  ingest.set_defaults(func=cmd_ingest)

  run = sub.add_parser('run', help='run the whole pipeline locally')
  data_args(run)
  common(run)
  add_settings_flags(run, 'run')
  run.add_argument('--preset', choices=('real',),
                   help='real: the documented real-data configuration '
                   '(configs.REAL_DATA_PRESET; README "Training on real '
                   'data"); flags and SKINLESION_* variables override it')
  run.add_argument('--no-cache', action='store_true',
                   help='re-run every component')
  run.add_argument('--beam-workers', type=int, metavar='N',
                   help='Beam DirectRunner worker processes for the data '
                   'components (default 1: in-process; 0: one per core); '
                   'more pays only on large archives, see BENCHMARKS.md')
  run.set_defaults(func=cmd_run)

  summ = sub.add_parser('summary', help="summarise a home's latest run")
  common(summ)
  add_settings_flags(summ, 'summary')
  summ.set_defaults(func=cmd_summary)

  pred = sub.add_parser(
      'predict', help='class probabilities of a folder of images (CSV)')
  pred.add_argument('--model', required=True,
                    help='a pushed version directory, or the serving base '
                    'directory (its latest version)')
  pred.add_argument('--images', required=True, help='folder of images')
  pred.add_argument('--out', required=True, help='CSV file to write')
  pred.add_argument('--format', choices=('labels', 'isic'), default='labels',
                    help='isic: ISIC 2018 columns image,MEL,NV,BCC,AKIEC,'
                    'BKL,DF,VASC (default: our label names)')
  pred.add_argument('--tflite', nargs='?', const=configs.TFLITE_FORMATS[0],
                    choices=configs.TFLITE_FILE_FORMATS,
                    help='use the pushed .tflite of this format (default '
                    f'{configs.TFLITE_FORMATS[0]}; image_only_*: a metadata '
                    "model's image-only file) instead of the SavedModel")
  pred.add_argument('--metadata', metavar='CSV',
                    help='patient metadata for a model that reads it: '
                    'HAM10000 columns (image_id, age, sex, localization) or '
                    'ISIC 2019 columns (image, age_approx, sex, '
                    'anatom_site_general); images without a row get '
                    'missing values')
  pred.set_defaults(func=cmd_predict)

  srv = sub.add_parser(
      'serve', help='a local try-it page: upload a photo, see the top-3 '
      'classes, Grad-CAM and the model\'s gates')
  srv.add_argument('--model', required=True,
                   help='a pushed version directory, or the serving base '
                   'directory (its latest version)')
  srv.add_argument('--port', type=int, default=configs.SERVE_PORT,
                   help=f'default {configs.SERVE_PORT} (0: any free port)')
  srv.add_argument('--host', default=configs.SERVE_HOST,
                   help=f'default {configs.SERVE_HOST} (this machine only)')
  srv.add_argument('--tflite', nargs='?', const=configs.TFLITE_FORMATS[0],
                   choices=configs.TFLITE_FILE_FORMATS,
                   help='serve the pushed .tflite of this format (default '
                   f'{configs.TFLITE_FORMATS[0]}; no Grad-CAM) instead of '
                   'the SavedModel')
  srv.add_argument('--metadata', metavar='CSV',
                   help='patient metadata by image name (as predict '
                   '--metadata): an upload whose name has a row gets it '
                   'unless the form gives values')
  srv.add_argument('--max-upload-mb', type=float,
                   default=configs.SERVE_MAX_UPLOAD_MB,
                   help='largest accepted upload (default '
                   f'{configs.SERVE_MAX_UPLOAD_MB:g})')
  srv.set_defaults(func=cmd_serve)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  # Google client libraries warn about Python 3.10 on import, and
  # TensorFlow's C++ runtime logs at INFO: neither is actionable here.
  warnings.filterwarnings('ignore', category=FutureWarning)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == '__main__':
  sys.exit(main())
