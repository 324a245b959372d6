"""The metadata model's .tflite files: the SavedModel's function, numeric.

A mixed_input model (the CNN baseline as its image backbone, width 0.25,
32 px, 1 epoch of 2 steps: these checks are about the metadata path, which
every backbone shares; tests/models/test_registry.py converts the
MobileNetV2- and EfficientNet-Lite0-backed ones) is trained by the
Trainer's run_fn; its SavedModel takes the raw metadata, its .tflite files
the encoded vector of the same rows.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_lite_support.metadata.python import metadata as tflite_metadata

from mobile_export import data
from mobile_export import parity
from mobile_export import tflite
from models import features
from models import metadata_vector
from pipeline import configs
from tests.conftest import train_tiny

SIZE = 32
# Rows with a missing age, unknown / odd sexes, out-of-vocabulary sites.
AGES = [45.0, float('nan'), 70.0, 5.0, float('nan'), 30.0, 85.0, 60.0]
SEXES = ['female', 'male', 'unknown', 'Male', 'female', 'male', '', 'male']
SITES = ['back', 'kneecap', 'face', 'unknown', 'posterior torso', 'trunk',
         'scalp', 'palms/soles']


@pytest.fixture(scope='module')
def saved_model(tiny_tfrecords, tmp_path_factory):
  fn_args, _ = train_tiny(tiny_tfrecords, tmp_path_factory.mktemp('mixed'),
                      model='mixed_input', backbone='cnn_baseline',
                      width=0.25, image_size=SIZE)
  return fn_args.serving_model_dir


@pytest.fixture(scope='module')
def rows(tiny_tfrecords):
  pixels, _ = data.load_images([tiny_tfrecords[1]], SIZE)
  pixels = pixels[:len(AGES)]
  raw = {features.AGE_KEY: np.asarray(AGES, np.float32),
         features.SEX_KEY: np.asarray(SEXES, object),
         features.LOCALIZATION_KEY: np.asarray(SITES, object)}
  return pixels, raw, data.encode_metadata(raw)


@pytest.fixture(scope='module')
def reference(saved_model, rows):
  pixels, raw, _ = rows
  return parity.saved_model_predict(saved_model, pixels, metadata=raw)


@pytest.fixture(scope='module')
def int8_model(saved_model, tiny_tfrecords):
  train = [tiny_tfrecords[0]]
  buffer = tflite.convert(
      saved_model, tflite.INT8,
      data.representative_images(train, SIZE, 30, seed=1),
      data.representative_metadata(train, 30, seed=1))
  return tflite.add_metadata(buffer, configs.LABELS, name='mixed',
                             description='d', version='v1', author='a',
                             licenses='l')


def _op_names(buffer):
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
  codes = [max(c.builtinCode, c.deprecatedBuiltinCode)
           for c in model.operatorCodes]
  return len(model.subgraphs), {codes[op.opcodeIndex]
                                for sg in model.subgraphs
                                for op in sg.operators}


def test_the_saved_models_signatures_answer_alike(saved_model, rows,
                                                 reference):
  pixels, _, vectors = rows
  loaded = tf.saved_model.load(saved_model)
  numeric = loaded.signatures[features.METADATA_VECTOR_SIGNATURE](
      images=tf.constant(pixels / 255.0, tf.float32),
      metadata=tf.constant(vectors))[features.PREDICTION_KEY].numpy()
  np.testing.assert_allclose(numeric, reference, atol=1e-6)
  # The metadata moves the answer (the test would pass for a model that
  # ignored it otherwise).
  other = parity.saved_model_predict(saved_model, pixels, metadata={
      features.AGE_KEY: np.full(len(AGES), 99.0, np.float32),
      features.SEX_KEY: np.asarray(['female'] * len(AGES), object),
      features.LOCALIZATION_KEY: np.asarray(['acral'] * len(AGES), object)})
  assert np.abs(other - reference).max() > 1e-6


def test_float32_conversion_is_the_same_function(saved_model, rows, reference):
  pixels, _, vectors = rows
  buffer = tflite.converter(saved_model).convert()
  np.testing.assert_allclose(tflite.predict(buffer, pixels, vectors),
                             reference, atol=1e-4)


def test_float16_matches_and_has_no_string_ops(saved_model, rows, reference):
  pixels, _, vectors = rows
  buffer = tflite.convert(saved_model, tflite.FLOAT16)
  interpreter = tf.lite.Interpreter(model_content=buffer)
  image, vector = interpreter.get_input_details()
  assert (image['name'], list(image['shape']), image['dtype']) == (
      'images', [1, SIZE, SIZE, 3], np.float32)
  assert (vector['name'], list(vector['shape']), vector['dtype']) == (
      features.METADATA_VECTOR_KEY, [1, metadata_vector.SIZE], np.float32)
  np.testing.assert_allclose(tflite.predict(buffer, pixels, vectors),
                             reference, atol=2e-2)
  subgraphs, ops = _op_names(buffer)
  assert subgraphs == 1  # No table initializer.
  assert not ops & {tflite.schema_fb.BuiltinOperator.HASHTABLE,
                    tflite.schema_fb.BuiltinOperator.HASHTABLE_FIND,
                    tflite.schema_fb.BuiltinOperator.HASHTABLE_IMPORT,
                    tflite.schema_fb.BuiltinOperator.CALL_ONCE}


def test_int8_takes_raw_pixels_and_a_float_vector_and_matches(
    int8_model, rows, reference):
  pixels, _, vectors = rows
  image, vector = tf.lite.Interpreter(
      model_content=int8_model).get_input_details()
  assert image['dtype'] == np.uint8
  scale, zero_point = image['quantization']
  assert scale == pytest.approx(1 / 255, rel=1e-3) and zero_point == 0
  assert vector['dtype'] == np.float32 and vector['quantization'] == (0.0, 0)
  probabilities = tflite.predict(int8_model, pixels, vectors)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
  assert np.abs(probabilities - reference).max() < 0.1
  # Convolutions and the hidden Dense layers are int8, except the metadata
  # MLP's first, which reads the float32 vector input as it is; the output
  # layer and the softmax stay float.
  tensors = tf.lite.Interpreter(model_content=int8_model).get_tensor_details()
  ops = tf.lite.Interpreter(
      model_content=int8_model)._get_ops_details()  # pylint: disable=protected-access
  assert {op['op_name'] for op in ops
          if op['op_name'] in ('CONV_2D', 'DEPTHWISE_CONV_2D')
          and tensors[op['inputs'][0]]['dtype'] != np.int8} == set()
  assert 'SOFTMAX' in {op['op_name'] for op in ops
                       if tensors[op['inputs'][0]]['dtype'] == np.float32}
  dense_weights = [tensors[op['inputs'][1]]['dtype'] for op in ops
                   if op['op_name'] == 'FULLY_CONNECTED']
  assert sorted(map(str, dense_weights)) == sorted(map(str, [
      np.float32, np.int8, np.int8, np.float32])), dense_weights
  assert dense_weights[-1] == np.float32, dense_weights


def test_predict_refuses_missing_or_misshapen_metadata(int8_model, rows):
  pixels, _, vectors = rows
  with pytest.raises(ValueError, match='metadata'):
    tflite.predict(int8_model, pixels)
  with pytest.raises(ValueError, match='expected'):
    tflite.predict(int8_model, pixels, vectors[:, :-1])


def test_metadata_names_and_describes_both_inputs(int8_model):
  displayer = tflite_metadata.MetadataDisplayer.with_model_buffer(int8_model)
  assert displayer.get_packed_associated_file_list() == ['labels.txt']
  meta = json.loads(displayer.get_metadata_json())
  image, vector = meta['subgraph_metadata'][0]['input_tensor_metadata']
  assert image['name'] == 'image'
  norm = [p for p in image['process_units']
          if p['options_type'] == 'NormalizationOptions'][0]['options']
  assert norm == {'mean': [0.0], 'std': [1.0]}
  assert vector['name'] == features.METADATA_VECTOR_KEY
  for i, (slot, _) in enumerate(metadata_vector.SLOTS):
    assert f'{i}: {slot} (' in vector['description']
  output = meta['subgraph_metadata'][0]['output_tensor_metadata'][0]
  assert output['associated_files'][0]['name'] == 'labels.txt'
  spec = tflite.input_spec(int8_model)
  assert spec['dtype'] == 'uint8'
  assert spec[features.METADATA_VECTOR_KEY]['shape'] == [
      1, metadata_vector.SIZE]


def test_int8_needs_the_metadata_of_its_representative_images(saved_model,
                                                              rows):
  pixels, _, vectors = rows
  images = list(pixels / 255.0)
  with pytest.raises(ValueError, match='metadata'):
    tflite.convert(saved_model, tflite.INT8, images)
  with pytest.raises(ValueError, match='8 images'):
    tflite.convert(saved_model, tflite.INT8, images, list(vectors[:3]))


def test_skinlesion_predict_feeds_a_metadata_tflite_the_encoded_vector(
    int8_model, rows, reference, tmp_path):
  from pipeline import predict  # pylint: disable=g-import-not-at-top
  pixels, _, vectors = rows
  path = tmp_path / 'model_int8.tflite'
  path.write_bytes(int8_model)
  predictor = predict._TFLitePredictor(str(path))  # pylint: disable=protected-access
  assert predictor.metadata_keys == features.METADATA_KEYS
  # As metadata_csv gives them: a missing age is None.
  given = [{features.AGE_KEY: None if np.isnan(a) else a,
            features.SEX_KEY: s, features.LOCALIZATION_KEY: l}
           for a, s, l in zip(AGES, SEXES, SITES)]
  np.testing.assert_array_equal(predictor(pixels, given),
                                tflite.predict(int8_model, pixels, vectors))
  assert np.abs(predictor(pixels, given) - reference).max() < 0.1


# The image-only files beside the metadata ones (issue 16): one uint8 image
# input, the same network with every metadata value missing.

@pytest.fixture(scope='module')
def image_only_int8(saved_model, tiny_tfrecords):
  train = [tiny_tfrecords[0]]
  buffer = tflite.convert(saved_model, tflite.image_only(tflite.INT8),
                          data.representative_images(train, SIZE, 30, seed=1))
  return tflite.add_metadata(buffer, configs.LABELS, name='mixed',
                             description='d', version='v1', author='a',
                             licenses='l')


@pytest.fixture(scope='module')
def missing_reference(saved_model, rows):
  return parity.saved_model_predict(saved_model, rows[0], image_only=True)


def test_image_only_signature_is_the_model_with_metadata_missing(
    saved_model, rows, missing_reference):
  pixels = rows[0]
  missing = parity.saved_model_predict(saved_model, pixels, metadata={
      features.AGE_KEY: np.full(len(pixels), np.nan, np.float32),
      features.SEX_KEY: np.asarray([features.UNKNOWN] * len(pixels), object),
      features.LOCALIZATION_KEY: np.asarray([features.UNKNOWN] * len(pixels),
                                            object)})
  np.testing.assert_allclose(missing_reference, missing, atol=1e-6)
  np.testing.assert_array_equal(
      metadata_vector.MISSING,
      data.encode_metadata({features.AGE_KEY: np.array([np.nan], np.float32),
                            features.SEX_KEY: np.array([''], object),
                            features.LOCALIZATION_KEY: np.array(['x'],
                                                                object)})[0])
  with pytest.raises(ValueError, match='no metadata'):
    parity.saved_model_predict(saved_model, pixels, image_only=True,
                               metadata=rows[1])


def test_image_only_float16_has_one_image_input_and_matches(
    saved_model, rows, missing_reference):
  buffer = tflite.convert(saved_model, tflite.image_only(tflite.FLOAT16))
  image, vector = tflite.input_tensors(buffer)
  assert vector is None
  assert (list(image['shape']), image['dtype']) == ([1, SIZE, SIZE, 3],
                                                    np.float32)
  np.testing.assert_allclose(tflite.predict(buffer, rows[0]),
                             missing_reference, atol=2e-2)
  subgraphs, ops = _op_names(buffer)
  assert subgraphs == 1
  assert tflite.schema_fb.BuiltinOperator.HASHTABLE not in ops
  # No shape computed at run time (the signature tiles the missing vector
  # to its batch): XNNPACK refuses a graph with a dynamic-sized tensor.
  assert not ops & {tflite.schema_fb.BuiltinOperator.SHAPE,
                    tflite.schema_fb.BuiltinOperator.TILE}


def test_image_only_int8_takes_raw_pixels_alone_and_matches(
    image_only_int8, rows, missing_reference):
  image, vector = tflite.input_tensors(image_only_int8)
  assert vector is None and image['dtype'] == np.uint8
  scale, zero_point = image['quantization']
  assert scale == pytest.approx(1 / 255, rel=1e-3) and zero_point == 0
  probabilities = tflite.predict(image_only_int8, rows[0])
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
  _, ops = _op_names(image_only_int8)
  assert not ops & {tflite.schema_fb.BuiltinOperator.SHAPE,
                    tflite.schema_fb.BuiltinOperator.TILE}
  assert np.abs(probabilities - missing_reference).max() < 0.1
  meta = tflite.read_metadata(image_only_int8)
  inputs = meta['subgraph_metadata'][0]['input_tensor_metadata']
  assert [t['name'] for t in inputs] == ['image']
  assert features.METADATA_VECTOR_KEY not in tflite.input_spec(
      image_only_int8)


def test_image_only_formats_are_for_models_with_metadata(saved_model, rows,
                                                         tmp_path):
  assert tflite.file_name(tflite.image_only(tflite.INT8)) == (
      'model_image_only_int8.tflite')
  assert tflite.base_format('image_only_float16') == (tflite.FLOAT16, True)
  with pytest.raises(ValueError, match='unknown TFLite format'):
    tflite.file_name('image_only_int4')
  with pytest.raises(ValueError, match='takes no metadata'):
    tflite.convert(saved_model, tflite.image_only(tflite.INT8),
                   list(rows[0] / 255.0), list(rows[2]))
  from models import export  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  plain = str(tmp_path / 'plain')
  export.export_serving_model(
      registry.build('cnn_baseline', num_classes=len(configs.LABELS),
                     image_size=SIZE, width=0.25), plain, SIZE)
  with pytest.raises(ValueError, match='image-only already'):
    tflite.convert(plain, tflite.image_only(tflite.FLOAT16))


def test_task_library_loads_the_image_only_int8_file_with_no_code(
    image_only_int8, task_library_python, tiny_archive, tmp_path):
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from benchmarks import task_library_agreement  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'model_image_only_int8.tflite'
  path.write_bytes(image_only_int8)
  jpegs = sorted(glob.glob(os.path.join(tiny_archive, '**', '*.jpg'),
                           recursive=True))[:12]
  result = task_library_agreement.compare(str(path), jpegs,
                                          task_library_python)
  assert result['labels'] == list(configs.LABELS)
  # Its own JPEG decoder and resize: about one grey level from ours
  # (tests/mobile_export/test_task_library.py).
  assert result['max_sum_error'] <= 0.02
  assert result['max_score_difference'] <= 0.03
  assert result['top1_agreement_outside_near_ties'] in (None, 1.0)
