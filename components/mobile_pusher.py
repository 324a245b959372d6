"""MobilePusher: one atomic version directory for servers and apps.

Replaces the standard Pusher.  Only when the model is blessed (by the
Evaluator and, when wired, by the IntervalGate), it writes
``<base_directory>/<model_version>/`` (the version ``MobileExporter`` wrote
into the TFLite metadata) with:

* the SavedModel files at the top (``saved_model.pb``, ``variables/``,
  ``assets/``), so TF Serving can serve ``<base_directory>`` as before;
* the .tflite files that passed the parity gate (a file that failed is left
  out; ``manifest.json`` says why);
* ``labels.txt``, the one label list, in output order;
* ``manifest.json``: software versions, sha256 and size of every other file,
  test-split metrics, input specs, parity results, lineage, and the
  blessing: every gate with its value and bound (the Evaluator's TFMA
  thresholds, when its ``evaluation`` is wired, and the IntervalGate's
  subgroup and regression gates), the test-split metrics with their 95%
  intervals (``intervals.json``), and the probability calibration (``models/calibration.py``).

The directory is written under a temporary name and renamed into place
(``mobile_export/release.py``), so a reader never sees half a version.  The
output is a standard ``PushedModel`` with the standard Pusher's custom
properties (``pushed``, ``pushed_destination``, ``pushed_version``), plus
``pushed_tflite`` (JSON list of the pushed .tflite names) and ``manifest``.
Like the standard Pusher, it also archives a copy under the artifact's URI.
"""

import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow as tf
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from components import mobile_exporter
from mobile_export import release
from mobile_export import tflite
from models import features


class MobilePusherSpec(component_spec.ComponentSpec):
  PARAMETERS = {
      'base_directory': component_spec.ExecutionParameter(type=str),
      # 1 when a gate_blessing channel is wired: then a missing
      # blessing artifact blocks the push like a negative one.
      'require_gate_blessing': component_spec.ExecutionParameter(
          type=int, optional=True),
  }
  INPUTS = {
      'model': component_spec.ChannelParameter(type=standard_artifacts.Model),
      'model_blessing': component_spec.ChannelParameter(
          type=standard_artifacts.ModelBlessing),
      'mobile_models': component_spec.ChannelParameter(
          type=mobile_exporter.MobileModels),
      # The IntervalGate's blessing (components/interval_gate.py).
      'gate_blessing': component_spec.ChannelParameter(
          type=standard_artifacts.ModelBlessing, optional=True),
      # The Evaluator's evaluation: its gates' values go into the manifest.
      'evaluation': component_spec.ChannelParameter(
          type=standard_artifacts.ModelEvaluation, optional=True),
  }
  OUTPUTS = {
      'pushed_model': component_spec.ChannelParameter(
          type=standard_artifacts.PushedModel),
  }


def saved_model_inputs(image_size: int) -> Dict[str, str]:
  """What each SavedModel signature takes, for the manifest."""
  return {
      features.EXAMPLE_SIGNATURE: (
          'serialized tf.Example strings [N] with feature '
          f'"{features.IMAGE_KEY}" (encoded JPEG bytes) -> '
          f'"{features.PREDICTION_KEY}" float32 [N, classes]'),
      features.IMAGE_SIGNATURE: (
          f'float32 [N, {image_size}, {image_size}, 3] RGB in [0, 1]: the '
          'image resized (bilinear) to the input size, rounded to uint8, '
          f'divided by 255 -> "{features.PREDICTION_KEY}" float32 '
          '[N, classes]'),
  }


def _manifest_sections(report: Dict[str, Any], pushed: List[str]):
  """(inputs, metrics, parity) sections of the manifest from the report."""
  formats = report['formats']
  inputs = {'saved_model': saved_model_inputs(report['image_size'])}
  metrics = {'split': report['parity_split'],
             'saved_model': report['reference']}
  if report.get('reference_image_only'):
    # A model with metadata: the SavedModel with every metadata value
    # missing, what its image_only_* files are judged against.
    metrics['saved_model_image_only'] = report['reference_image_only']
  verdicts = {}
  for fmt, entry in formats.items():
    result = entry.get('parity') or {}
    if entry['file'] in pushed:
      inputs[entry['file']] = entry['input']
    if result:
      metrics[fmt] = result['metrics']
    verdicts[fmt] = {
        'file': entry['file'],
        'pushed': entry['file'] in pushed,
        'passed': entry['passed'],
        'reasons': entry['reasons'],
        'examples': result.get('examples'),
        'top1_agreement': result.get('top1_agreement'),
        'balanced_accuracy_drop': result.get('balanced_accuracy_drop'),
        # {"value", "lower", "upper"}: 95% intervals over lesions.
        'top1_agreement_interval': result.get('top1_agreement_interval'),
        'balanced_accuracy_drop_interval': result.get(
            'balanced_accuracy_drop_interval'),
        'max_probability_difference': result.get(
            'max_probability_difference'),
    }
  parity = {'split': report['parity_split'],
            'thresholds': report['thresholds'],
            'representative': report['representative'],
            'formats': verdicts}
  return inputs, metrics, parity


NOT_PUSHED_REASON = 'not_pushed_reason'


def blessing_section(input_dict: Dict[str, List[types.Artifact]],
                     labels: List[str], model_path: str) -> Dict[str, Any]:
  """The manifest's ``blessing``: why this version was allowed out.

  The Evaluator's gates with their values (``run_report.blessing_summary``,
  the run report's own table), the overall test-split metrics, the
  IntervalGate's gates and 95% intervals, and the calibration recorded beside the SavedModel.
  """
  from components import run_report  # pylint: disable=g-import-not-at-top
  from models import calibration  # pylint: disable=g-import-not-at-top
  gate_blessings = input_dict.get('gate_blessing') or []
  gate_blessing = gate_blessings[0] if gate_blessings else None
  gap = run_report.read_gate_report(gate_blessing)
  section: Dict[str, Any] = {'evaluator_blessed': True,
                             'interval_gate_blessed': (
                                 None if gap is None
                                 else bool(gap['blessed']))}
  evaluations = input_dict.get('evaluation') or []
  if evaluations:
    evaluation = run_report.read_evaluation(evaluations[0].uri)
    summary = run_report.blessing_summary(True, evaluation, gap, labels)
    section['gates'] = summary['gates']
    section['compared_with_baseline'] = summary['has_baseline']
    section['test_metrics'] = {
        k: v for k, v in sorted(evaluation.overall.items())
        if '(change vs baseline)' not in k and v is not None}
  section['interval_gates'] = [
      {k: g.get(k) for k in ('gate', 'slice_family', 'metric', 'difference',
                             'failed_groups', 'bound', 'confidence', 'passed',
                             'note') if k in g}
      for g in (gap or {}).get('gates', [])]
  found = (run_report.read_intervals(gate_blessing.uri)
           if gate_blessing is not None else None)
  if found:
    # 95% intervals, {"value", "lower", "upper"} (bootstrap over lesions).
    section['test_intervals'] = dict(
        found['overall']['metrics'], method=found['method'],
        confidence=found['confidence'], examples=found['overall']['examples'],
        lesions=found['overall']['lesions'])
  section['calibration'] = calibration.read(model_path)
  return section


def pushed_as(base_directory: str, model_uri: str) -> Optional[str]:
  """The latest version if its manifest's lineage is this model, else None."""
  version = release.latest_version(base_directory)
  if version is None:
    return None
  path = os.path.join(base_directory, version, release.MANIFEST_FILE)
  if not tf.io.gfile.exists(path):
    return None
  lineage = release.read_json(path).get('lineage') or {}
  return version if lineage.get('model_uri') == model_uri else None


def gate_blessed(input_dict: Dict[str, List[types.Artifact]],
                     exec_properties: Dict[str, Any]) -> bool:
  """False when the IntervalGate's blessing is negative, or required and
  absent."""
  blessings = input_dict.get('gate_blessing') or []
  if not blessings:
    if exec_properties.get('require_gate_blessing'):
      logging.warning('No IntervalGate blessing although one is required: '
                      'not pushed.')
      return False
    return True
  blessing = artifact_utils.get_single_instance(blessings)
  if not blessing.get_int_custom_property('blessed'):
    logging.info('The IntervalGate did not bless the model (%s): not '
                 'pushed.', blessing.uri)
    return False
  return True


class Executor(pusher_executor.Executor):
  """Pushes a blessed model's SavedModel and passing .tflite files."""

  def _not_pushed(self, model_push: types.Artifact, reason: str) -> None:
    logging.info('Not pushed: %s.', reason)
    self._MarkNotPushed(model_push)
    model_push.set_string_custom_property(NOT_PUSHED_REASON, reason)

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict['pushed_model'])
    if not self.CheckBlessing(input_dict):
      self._not_pushed(model_push, 'model not blessed')
      return
    if not gate_blessed(input_dict, exec_properties):
      self._not_pushed(model_push, 'the interval gate did not bless the model')
      return
    base_directory = exec_properties['base_directory']
    model = input_dict['model'][0]
    already = pushed_as(base_directory, model.uri)
    if already is not None:
      # A rerun (or a retried run) of a model that is already the latest
      # version: publishing it again would only duplicate that version.
      self._not_pushed(model_push, f'already pushed as version {already}')
      return
    mobile = artifact_utils.get_single_instance(input_dict['mobile_models'])
    report_path = os.path.join(mobile.uri, mobile_exporter.REPORT_FILE)
    if not tf.io.gfile.exists(report_path):
      raise RuntimeError(f'the model is blessed but {report_path} is missing: '
                         'the MobileExporter did not export it')
    report = release.read_json(report_path)
    version = report['model_version']
    labels = report['labels']
    model_path = self.GetModelPath(input_dict)
    pushed = [e['file'] for e in report['formats'].values() if e['passed']]
    destination = os.path.join(base_directory, version)

    def fill(staging: str) -> None:
      io_utils.copy_dir(model_path, staging)
      for name in pushed:
        source = os.path.join(mobile.uri, name)
        expected = next(e['sha256'] for e in report['formats'].values()
                        if e['file'] == name)
        target = os.path.join(staging, name)
        io_utils.copy_file(source, target)
        if release.sha256_file(target) != expected:
          raise IOError(f'{name}: sha256 differs from the exporter\'s record')
      with tf.io.gfile.GFile(os.path.join(staging, tflite.LABELS_FILE),
                             'w') as f:
        f.write('\n'.join(labels) + '\n')
      inputs, metrics, parity = _manifest_sections(report, pushed)
      manifest = release.build_manifest(
          model_name=report['model_name'], model_version=version,
          labels=labels, files=release.file_inventory(staging),
          metrics=metrics, inputs=inputs, parity=parity,
          blessing=blessing_section(input_dict, labels, model_path),
          lineage={'model_uri': model.uri,
                   'model_artifact_id': model.id,
                   'model_blessing_uri': input_dict['model_blessing'][0].uri,
                   'gate_blessing_uri': (
                       input_dict['gate_blessing'][0].uri
                       if input_dict.get('gate_blessing') else None),
                   'mobile_models_uri': mobile.uri})
      release.write_json(os.path.join(staging, release.MANIFEST_FILE),
                         manifest)
      # Archive the copy under the artifact's URI (as the standard Pusher
      # does) before the version appears: the rename into place is the last
      # step, so a push that fails anywhere publishes nothing.
      io_utils.copy_dir(staging, model_push.uri)

    if tf.io.gfile.exists(destination):
      # As the standard Pusher: the same export pushed again (a retried
      # execution) keeps the version already there.
      logging.info('Version %s exists already; not pushed again.',
                   destination)
      io_utils.copy_dir(destination, model_push.uri)
    else:
      release.publish_version(base_directory, version, fill)
      logging.info('Pushed %s (SavedModel, %s, labels, manifest).',
                   destination, ', '.join(pushed) or 'no .tflite')
    self._MarkPushed(model_push, pushed_destination=destination,
                     pushed_version=version)
    model_push.set_string_custom_property('pushed_tflite', json.dumps(pushed))
    model_push.set_string_custom_property(
        'manifest', os.path.join(destination, release.MANIFEST_FILE))


class MobilePusher(base_component.BaseComponent):
  """Pushes SavedModel, passing .tflite files, labels and manifest atomically.

  Inputs: ``model`` (Trainer), ``model_blessing`` (Evaluator),
  ``mobile_models`` (MobileExporter), optionally ``gate_blessing``
  (IntervalGate): pushed only when every blessing is positive;
  optionally ``evaluation`` (Evaluator), whose gate values the manifest
  records.  Output: ``pushed_model`` (``PushedModel``).
  """

  SPEC_CLASS = MobilePusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel,
               model_blessing: types.BaseChannel,
               mobile_models: types.BaseChannel, base_directory: str,
               gate_blessing: Optional[types.BaseChannel] = None,
               evaluation: Optional[types.BaseChannel] = None):
    spec = MobilePusherSpec(
        model=model, model_blessing=model_blessing,
        mobile_models=mobile_models, base_directory=base_directory,
        gate_blessing=gate_blessing, evaluation=evaluation,
        require_gate_blessing=int(gate_blessing is not None),
        pushed_model=types.Channel(type=standard_artifacts.PushedModel))
    super().__init__(spec=spec)
