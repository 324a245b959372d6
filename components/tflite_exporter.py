"""TFLiteExporter: the pushed model as an int8 .tflite with metadata.

Runs after the Pusher.  When the Pusher pushed the candidate (it does so only
for a blessed model), this converts the model's raw-image signature to a
full-integer int8 TFLite model, calibrated on images of the train split,
attaches TFLite metadata (labels, normalization, names, licence) and writes
``model_int8.tflite`` and ``labels.txt`` both into its own artifact and
beside the pushed SavedModel (``<pushed version dir>/``).  When nothing was
pushed it exports nothing and records why.
"""

import json
import os
from typing import Any, Dict, List

from absl import logging
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import base_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from mobile_export import tflite
from models import preprocessing

LABELS_FILE = 'labels.txt'


class TFLiteModel(types.Artifact):
  """A .tflite model file (with metadata) and its labels file."""
  # Also the import path Kubeflow / Vertex use (see components/__init__.py).
  TYPE_NAME = 'components.TFLiteModel'


class TFLiteExporterSpec(component_spec.ComponentSpec):
  PARAMETERS = {
      # JSON lists of strings (MLMD records only scalar properties).
      'labels': component_spec.ExecutionParameter(type=str),
      'label_descriptions': component_spec.ExecutionParameter(type=str),
      'file_name': component_spec.ExecutionParameter(type=str),
      'representative_examples': component_spec.ExecutionParameter(type=int),
      'image_size': component_spec.ExecutionParameter(type=int),
      'model_name': component_spec.ExecutionParameter(type=str),
      'author': component_spec.ExecutionParameter(type=str),
      'licenses': component_spec.ExecutionParameter(type=str),
  }
  INPUTS = {
      'model': component_spec.ChannelParameter(type=standard_artifacts.Model),
      'examples': component_spec.ChannelParameter(
          type=standard_artifacts.Examples),
      'pushed_model': component_spec.ChannelParameter(
          type=standard_artifacts.PushedModel),
  }
  OUTPUTS = {
      'tflite_model': component_spec.ChannelParameter(type=TFLiteModel),
  }


def representative_images(examples: types.Artifact, split: str, count: int,
                          image_size: int) -> List[Any]:
  """The first `count` images of a split, preprocessed as for serving."""
  split_uri = artifact_utils.get_split_uri([examples], split)
  dataset = preprocessing.image_label_dataset(
      [os.path.join(split_uri, '*')], image_size).take(count)
  return [preprocessing.to_model_input(image).numpy()
          for image, _ in dataset]


class Executor(base_executor.BaseExecutor):
  """Converts and writes the .tflite when the Pusher pushed."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    pushed = artifact_utils.get_single_instance(input_dict['pushed_model'])
    output = artifact_utils.get_single_instance(output_dict['tflite_model'])
    if not pushed.get_int_custom_property('pushed'):
      logging.info('The model was not pushed (not blessed): no TFLite export.')
      output.set_int_custom_property('exported', 0)
      output.set_string_custom_property('reason', 'model not pushed')
      return

    model = artifact_utils.get_single_instance(input_dict['model'])
    examples = artifact_utils.get_single_instance(input_dict['examples'])
    saved_model_dir = path_utils.serving_model_path(model.uri)
    labels = json.loads(exec_properties['labels'])
    images = representative_images(
        examples, 'train', exec_properties['representative_examples'],
        exec_properties['image_size'])
    logging.info('Converting %s to int8 with %d representative images.',
                 saved_model_dir, len(images))
    buffer = tflite.convert_int8(saved_model_dir, images)
    buffer = tflite.add_metadata(
        buffer, labels,
        name=exec_properties['model_name'],
        description=('Skin-lesion classifier for dermoscopic images. Decision '
                     'support for trained clinicians, not a diagnosis.'),
        version=pushed.get_string_custom_property('pushed_version'),
        author=exec_properties['author'],
        licenses=exec_properties['licenses'],
        label_descriptions=json.loads(exec_properties['label_descriptions']))

    file_name = exec_properties['file_name']
    destinations = [output.uri,
                    pushed.get_string_custom_property('pushed_destination')]
    for directory in destinations:
      tf.io.gfile.makedirs(directory)
      with tf.io.gfile.GFile(os.path.join(directory, file_name), 'wb') as f:
        f.write(buffer)
      with tf.io.gfile.GFile(os.path.join(directory, LABELS_FILE), 'w') as f:
        f.write('\n'.join(labels) + '\n')
    output.set_int_custom_property('exported', 1)
    output.set_string_custom_property(
        'pushed_tflite', os.path.join(destinations[1], file_name))
    output.set_int_custom_property('size_bytes', len(buffer))
    logging.info('TFLite model (%d bytes) written to %s',
                 len(buffer), json.dumps(destinations))


class TFLiteExporter(base_component.BaseComponent):
  """Exports the pushed model as int8 TFLite with metadata, beside it."""

  SPEC_CLASS = TFLiteExporterSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
               pushed_model: types.BaseChannel, labels: List[str],
               image_size: int, label_descriptions: List[str],
               file_name: str = 'model_int8.tflite',
               representative_examples: int = 100,
               model_name: str = 'skin-lesion-classifier',
               author: str = '', licenses: str = ''):
    spec = TFLiteExporterSpec(
        model=model, examples=examples, pushed_model=pushed_model,
        labels=json.dumps(list(labels)),
        label_descriptions=json.dumps(list(label_descriptions)),
        file_name=file_name, representative_examples=representative_examples,
        image_size=image_size, model_name=model_name, author=author,
        licenses=licenses,
        tflite_model=types.Channel(type=TFLiteModel))
    super().__init__(spec=spec)
