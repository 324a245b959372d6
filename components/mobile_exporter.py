"""MobileExporter: the blessed model as .tflite files, each judged for parity.

Runs after the Evaluator.  When the blessing says blessed, it converts the
model's raw-image signature (for a model with patient metadata, its
metadata-vector signature: image plus encoded metadata, on the same
examples' metadata) to each configured format (float16; int8 with
uint8 input, calibrated on a seeded sample of the train split); a model with
metadata also gets an image-only file of each format (``image_only_int8``,
...: its image-only signature, every metadata value missing, judged against
that signature), for apps whose image classifier takes one image.  It attaches
TFLite metadata, and runs every .tflite and the SavedModel on the test split:
a file passes when it agrees with the SavedModel's top-1 on enough images and
loses little enough balanced accuracy.  The files (passed or not) and
``mobile_export.json`` (the verdicts and metrics) go into the output
artifact; ``MobilePusher`` pushes only the files that passed.  When the model
is not blessed, nothing is converted and the artifact says so.

The model version (a UNIX timestamp, as the standard Pusher's) is chosen
here, because it is written into the TFLite metadata; the pusher names the
version directory after it.
"""

import dataclasses
import json
import os
import time
from typing import Any, Dict, List

from absl import logging
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import base_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import intervals
from mobile_export import data
from mobile_export import parity
from mobile_export import release
from mobile_export import tflite

REPORT_FILE = 'mobile_export.json'
DESCRIPTION = ('Skin-lesion classifier for dermoscopic images: decision '
               'support for trained clinicians, not a diagnosis.')
IMAGE_ONLY_DESCRIPTION = (
    ' Image only: the patient-metadata model with every metadata value '
    '(age, sex, body site) taken as missing.')


class MobileModels(types.Artifact):
  """.tflite files of one model and ``mobile_export.json`` (their verdicts).

  Custom properties: ``blessed``, ``exported`` (0/1), ``model_version``,
  ``passed_formats`` and ``failed_formats`` (JSON lists), ``verdicts`` (JSON:
  format -> passed, agreement, drop, bytes, reasons), ``reason`` (why nothing
  was exported).
  """
  TYPE_NAME = 'components.MobileModels'


class MobileExporterSpec(component_spec.ComponentSpec):
  PARAMETERS = {
      # JSON lists of strings (MLMD records only scalar properties).
      'labels': component_spec.ExecutionParameter(type=str),
      'label_descriptions': component_spec.ExecutionParameter(type=str),
      'formats': component_spec.ExecutionParameter(type=str),
      'image_size': component_spec.ExecutionParameter(type=int),
      'representative_split': component_spec.ExecutionParameter(type=str),
      'representative_examples': component_spec.ExecutionParameter(type=int),
      'seed': component_spec.ExecutionParameter(type=int),
      'parity_split': component_spec.ExecutionParameter(type=str),
      'min_top1_agreement': component_spec.ExecutionParameter(type=float),
      'max_balanced_accuracy_drop': component_spec.ExecutionParameter(
          type=float),
      'model_name': component_spec.ExecutionParameter(type=str),
      'author': component_spec.ExecutionParameter(type=str),
      'licenses': component_spec.ExecutionParameter(type=str),
  }
  INPUTS = {
      'model': component_spec.ChannelParameter(type=standard_artifacts.Model),
      'model_blessing': component_spec.ChannelParameter(
          type=standard_artifacts.ModelBlessing),
      'examples': component_spec.ChannelParameter(
          type=standard_artifacts.Examples),
  }
  OUTPUTS = {
      'mobile_models': component_spec.ChannelParameter(type=MobileModels),
  }


def _split_files(examples: types.Artifact, split: str) -> List[str]:
  return [os.path.join(artifact_utils.get_split_uri([examples], split), '*')]


def _verdict(entry: Dict[str, Any]) -> Dict[str, Any]:
  """The short per-format verdict recorded in MLMD (for the run summary)."""
  result = entry.get('parity') or {}
  return {'passed': entry['passed'], 'reasons': entry['reasons'],
          'top1_agreement': result.get('top1_agreement'),
          'balanced_accuracy_drop': result.get('balanced_accuracy_drop'),
          'top1_agreement_interval': result.get('top1_agreement_interval'),
          'balanced_accuracy_drop_interval': result.get(
              'balanced_accuracy_drop_interval'),
          'bytes': entry.get('bytes')}


class Executor(base_executor.BaseExecutor):
  """Converts, attaches metadata, judges parity; only for a blessed model."""

  def representative_images(self, examples: types.Artifact, split: str,
                            image_size: int, count: int,
                            seed: int) -> List[np.ndarray]:
    """Calibration images for int8: a seeded sample of a split."""
    return data.representative_images(_split_files(examples, split),
                                      image_size, count, seed)

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    output = artifact_utils.get_single_instance(output_dict['mobile_models'])
    blessing = artifact_utils.get_single_instance(
        input_dict['model_blessing'])
    if not model_utils.is_model_blessed(blessing):
      logging.info('The model was not blessed: no mobile export.')
      output.set_int_custom_property('blessed', 0)
      output.set_int_custom_property('exported', 0)
      output.set_string_custom_property('reason', 'model not blessed')
      return
    output.set_int_custom_property('blessed', 1)

    model = artifact_utils.get_single_instance(input_dict['model'])
    examples = artifact_utils.get_single_instance(input_dict['examples'])
    saved_model_dir = path_utils.serving_model_path(
        model.uri, path_utils.is_old_model_artifact(model))
    labels = json.loads(exec_properties['labels'])
    formats = json.loads(exec_properties['formats'])
    image_size = exec_properties['image_size']
    model_version = str(int(time.time()))
    thresholds = parity.Thresholds(
        min_top1_agreement=exec_properties['min_top1_agreement'],
        max_balanced_accuracy_drop=exec_properties[
            'max_balanced_accuracy_drop'])

    parity_split = exec_properties['parity_split']
    calibration: List[np.ndarray] = []
    calibration_metadata = None
    reference_metrics = None
    reference_image_only_metrics = None
    try:
      with_metadata = tflite.takes_metadata(saved_model_dir)
    except tflite.MetadataInputsNotSupported as e:
      # A model with metadata exported before the metadata-vector signature:
      # every format fails with the reason; the pusher pushes the SavedModel
      # alone.
      logging.warning('No mobile export: %s', e)
      entries = {fmt: {'file': None, 'passed': False,
                       'reasons': [f'not converted: {e}']} for fmt in formats}
    else:
      parity_files = _split_files(examples, parity_split)
      pixels, truth = data.load_images(parity_files, image_size)
      # The parity intervals resample lesions (images of one lesion are not
      # independent).
      lesions = data.lesion_ids(parity_files)
      logging.info('Parity set: %d images of split %s.', len(pixels),
                   parity_split)
      # A model with metadata: the SavedModel reads the raw metadata, the
      # .tflite files their encoding (models/metadata_vector.py).
      raw_metadata = data.load_metadata(parity_files) if with_metadata else None
      vectors = (data.encode_metadata(raw_metadata) if with_metadata
                 else None)
      reference = parity.saved_model_predict(saved_model_dir, pixels,
                                             metadata=raw_metadata)
      # The image-only files' reference: the same SavedModel with every
      # metadata value missing.  A metadata model exported before that
      # signature existed gets failed image-only entries with the reason.
      image_only_reason = None
      if with_metadata:
        try:
          tflite.signature_key(saved_model_dir, image_only=True)
        except tflite.MetadataInputsNotSupported as e:
          image_only_reason = f'not converted: {e}'
          logging.warning('No image-only .tflite: %s', e)
      reference_image_only = (
          parity.saved_model_predict(saved_model_dir, pixels, image_only=True)
          if with_metadata and not image_only_reason else None)
      if tflite.INT8 in formats:
        split = exec_properties['representative_split']
        count = exec_properties['representative_examples']
        seed = exec_properties['seed']
        calibration = self.representative_images(examples, split, image_size,
                                                 count, seed)
        if with_metadata:
          calibration_metadata = data.representative_metadata(
              _split_files(examples, split), count, seed)

      entries = {}
      for fmt in formats + ([tflite.image_only(f) for f in formats]
                            if with_metadata else []):
        variant = tflite.base_format(fmt)[1]
        if variant and image_only_reason:
          entries[fmt] = {'file': None, 'passed': False,
                          'reasons': [image_only_reason]}
          continue
        entries[fmt] = self._export_one(
            fmt, saved_model_dir,
            (calibration, None if variant else calibration_metadata),
            output.uri, labels,
            json.loads(exec_properties['label_descriptions']), model_version,
            exec_properties, (pixels, None if variant else vectors), truth,
            lesions, reference_image_only if variant else reference,
            thresholds)
      reference_metrics = dataclasses.asdict(parity.classification_metrics(
          reference, truth, labels))
      if reference_image_only is not None:
        reference_image_only_metrics = dataclasses.asdict(
            parity.classification_metrics(reference_image_only, truth, labels))

    report = {
        'model_name': exec_properties['model_name'],
        'model_version': model_version,
        'labels': labels,
        'image_size': image_size,
        'saved_model': saved_model_dir,
        'parity_split': parity_split,
        'thresholds': {
            'min_top1_agreement': thresholds.min_top1_agreement,
            'max_balanced_accuracy_drop':
                thresholds.max_balanced_accuracy_drop},
        'representative': {
            'split': exec_properties['representative_split'],
            'examples': len(calibration), 'seed': exec_properties['seed']},
        'reference': reference_metrics,
        'formats': entries,
    }
    if reference_image_only_metrics is not None:
      # The SavedModel through its image-only signature: what the
      # image_only_* files are compared with.
      report['reference_image_only'] = reference_image_only_metrics
    release.write_json(os.path.join(output.uri, REPORT_FILE), report)
    passed = [f for f in entries if entries[f]['passed']]
    output.set_int_custom_property('exported', 1)
    output.set_string_custom_property('model_version', model_version)
    output.set_string_custom_property('passed_formats', json.dumps(passed))
    output.set_string_custom_property(
        'failed_formats', json.dumps([f for f in entries if f not in passed]))
    output.set_string_custom_property(
        'verdicts', json.dumps({f: _verdict(e) for f, e in entries.items()}))

  def _export_one(self, fmt, saved_model_dir, calibration, output_dir,
                  labels, label_descriptions, model_version, exec_properties,
                  parity_inputs, truth, lesions, reference, thresholds
                  ) -> Dict[str, Any]:
    """Converts one format and judges it; a failed conversion is a verdict.

    ``calibration``: (images, their metadata vectors or None);
    ``parity_inputs``: (uint8 pixels, their metadata vectors or None).
    """
    variant = tflite.base_format(fmt)[1]
    try:
      buffer = tflite.convert(saved_model_dir, fmt, *calibration)
      buffer = tflite.add_metadata(
          buffer, labels, name=exec_properties['model_name'],
          description=DESCRIPTION + (IMAGE_ONLY_DESCRIPTION if variant
                                     else ''),
          version=model_version,
          author=exec_properties['author'],
          licenses=exec_properties['licenses'],
          label_descriptions=label_descriptions)
    except Exception as e:  # pylint: disable=broad-except
      # The converter raises many types (ConverterError, ValueError, ...);
      # any of them only keeps this format out of the push.
      logging.exception('%s conversion failed', fmt)
      return {'file': None, 'passed': False,
              'reasons': [f'conversion failed: {type(e).__name__}: {e}']}
    name = tflite.file_name(fmt)
    path = os.path.join(output_dir, name)
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(buffer)
    result = parity.compare(fmt, reference,
                            tflite.predict(buffer, *parity_inputs),
                            truth, labels, thresholds, lesions,
                            seed=exec_properties['seed'])
    logging.info('%s: %d bytes, top-1 agreement %s, balanced accuracy drop '
                 '%s: %s', fmt, len(buffer),
                 intervals.text(result.top1_agreement_interval),
                 intervals.text(result.balanced_accuracy_drop_interval),
                 'passed' if result.passed else '; '.join(result.reasons))
    return {'file': name, 'bytes': len(buffer),
            'sha256': release.sha256_file(path),
            'input': tflite.input_spec(buffer),
            'parity': result.to_dict(),
            'passed': result.passed, 'reasons': result.reasons}


class MobileExporter(base_component.BaseComponent):
  """Converts the blessed model to .tflite formats and gates them on parity.

  Inputs: ``model`` (Trainer), ``model_blessing`` (Evaluator), ``examples``
  (ExampleGen; the representative and parity splits).  Output:
  ``mobile_models`` (``MobileModels``).
  """

  SPEC_CLASS = MobileExporterSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel,
               model_blessing: types.BaseChannel,
               examples: types.BaseChannel, labels: List[str],
               label_descriptions: List[str], image_size: int,
               formats: List[str], representative_split: str,
               representative_examples: int, seed: int, parity_split: str,
               min_top1_agreement: float, max_balanced_accuracy_drop: float,
               model_name: str, author: str = '', licenses: str = ''):
    for fmt in formats:
      tflite.file_name(fmt)  # Raises on an unknown format.
    parity.Thresholds(min_top1_agreement, max_balanced_accuracy_drop)
    spec = MobileExporterSpec(
        model=model, model_blessing=model_blessing, examples=examples,
        labels=json.dumps(list(labels)),
        label_descriptions=json.dumps(list(label_descriptions)),
        formats=json.dumps(list(formats)), image_size=image_size,
        representative_split=representative_split,
        representative_examples=representative_examples, seed=seed,
        parity_split=parity_split, min_top1_agreement=min_top1_agreement,
        max_balanced_accuracy_drop=max_balanced_accuracy_drop,
        model_name=model_name, author=author, licenses=licenses,
        mobile_models=types.Channel(type=MobileModels))
    super().__init__(spec=spec)
