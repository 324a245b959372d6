"""Writes the serving SavedModel with Keras 3's own export API.

Signatures (see ../shared/STACK.md for why it must be ExportArchive):
  * ``serving_default``: serialized tf.Example strings -> probabilities; used
    by TFMA and by model servers (TF Serving's predict/classify on Examples).
    For ``mixed_input`` it also parses the metadata (age, sex, localization)
    from the same tf.Example.
  * ``serving_images``: float32 [N, S, S, 3] in [0, 1] (already resized) ->
    probabilities; the one the TFLite converter reads.  For ``mixed_input``
    it takes the metadata too: ``age`` float32 [N] (NaN: missing), ``sex``
    and ``localization`` string [N].
  * ``serving_images_metadata_vector`` (``mixed_input`` only): the same
    images and ``metadata`` float32 [N, K], the encoded metadata
    (models/metadata_vector.py) -> probabilities.  The same layers as
    ``serving_images`` after its string encoding
    (registry.metadata_vector_model); the TFLite converter reads it.
  * ``serving_images_without_metadata`` (``mixed_input`` only): images alone
    -> probabilities, every metadata value missing (the vector
    metadata_vector.MISSING fed to the same layers): the source of the
    image-only .tflite files, which the Task Library / MediaPipe image
    classifiers load; single-view too.
All return ``{'probabilities': float32 [N, num_classes]}`` (temperature
scaled when the Trainer applied a fit: it is folded into the softmax layer,
``models/calibration.py``).
With test-time augmentation (``tta``: 'flips' or 'dihedral', models/tta.py)
both average the probabilities over the flipped / rotated views, and
  * ``serving_images_single_view`` (same inputs and output as
    ``serving_images``, metadata included for ``mixed_input``) is the plain
    model on one view: the TFLite converter (image-only models) and the
    parity gate read it (mobile_export/tflite.py); the metadata-vector
    signature is always single-view.
  * ``serving_gradcam``: the same images -> ``probabilities`` and ``heatmap``
    (float32 [N, h, w] in [0, 1], Grad-CAM of the top class at the feature
    map's resolution; ``models/explain.py``), so the SavedModel alone can
    explain its predictions (of the plain view, also with test-time
    augmentation: a heatmap belongs to one image).  Left out, with a logged reason, for a model
    Grad-CAM cannot take (several inputs, no ``feature_map`` layer).
"""

from absl import logging
import keras
import tensorflow as tf

from models import explain
from models import features
from models import metadata_vector
from models import preprocessing
from models import tta as tta_views
from models import registry

METADATA_SIGNATURE_INPUTS = {
    features.AGE_KEY: tf.float32,
    features.SEX_KEY: tf.string,
    features.LOCALIZATION_KEY: tf.string,
}


def export_serving_model(model: keras.Model, export_dir: str,
                         image_size: int, with_metadata: bool = False,
                         tta: str = 'none') -> None:
  """Writes the signatures above; ``tta``: one of configs.TTA_MODES (an
  unknown one raises ValueError when the signatures are traced)."""
  archive = keras.export.ExportArchive()
  archive.track(model)

  def probabilities(inputs):
    return tf.cast(model(inputs, training=False), tf.float32)

  def predict(inputs):
    return {features.PREDICTION_KEY: tta_views.average(probabilities, inputs,
                                                       tta)}

  spec = preprocessing.image_spec()
  if with_metadata:
    spec.update(preprocessing.metadata_spec())

  def serve_examples(examples):
    parsed = tf.io.parse_example(examples, spec)
    images = preprocessing.decode_batch(parsed[features.IMAGE_KEY], image_size)
    if with_metadata:
      return predict({'image': images,
                      **preprocessing.metadata_inputs(parsed)})
    return predict(images)

  archive.add_endpoint(
      name=features.EXAMPLE_SIGNATURE, fn=serve_examples,
      input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
  image_input = tf.TensorSpec([None, image_size, image_size, 3], tf.float32,
                              name='images')
  if with_metadata:
    metadata_input = [tf.TensorSpec([None], dtype, name=key)
                      for key, dtype in METADATA_SIGNATURE_INPUTS.items()]

    def with_raw_metadata(images, age, sex, localization):
      return {'image': images, **preprocessing.metadata_inputs(
          {features.AGE_KEY: age, features.SEX_KEY: sex,
           features.LOCALIZATION_KEY: localization})}

    def serve_images(images, age, sex, localization):
      return predict(with_raw_metadata(images, age, sex, localization))

    def serve_single_view(images, age, sex, localization):
      return {features.PREDICTION_KEY: probabilities(
          with_raw_metadata(images, age, sex, localization))}
    archive.add_endpoint(name=features.IMAGE_SIGNATURE, fn=serve_images,
                         input_signature=[image_input] + metadata_input)
    if tta != 'none':
      archive.add_endpoint(name=features.SINGLE_VIEW_IMAGE_SIGNATURE,
                           fn=serve_single_view,
                           input_signature=[image_input] + metadata_input)
    numeric = registry.metadata_vector_model(model)

    def serve_metadata_vector(images, metadata):
      return {features.PREDICTION_KEY: tf.cast(
          numeric([images, metadata], training=False), tf.float32)}
    archive.add_endpoint(
        name=features.METADATA_VECTOR_SIGNATURE, fn=serve_metadata_vector,
        input_signature=[image_input, tf.TensorSpec(
            [None, metadata_vector.SIZE], tf.float32,
            name=features.METADATA_VECTOR_KEY)])

    def serve_without_metadata(images):
      missing = tf.tile(tf.constant(metadata_vector.MISSING[None]),
                        [tf.shape(images)[0], 1])
      return serve_metadata_vector(images, missing)
    archive.add_endpoint(
        name=features.IMAGE_ONLY_SIGNATURE, fn=serve_without_metadata,
        input_signature=[image_input])
  else:
    archive.add_endpoint(
        name=features.IMAGE_SIGNATURE, fn=lambda images: predict(images),
        input_signature=[image_input])
    if tta != 'none':
      archive.add_endpoint(
          name=features.SINGLE_VIEW_IMAGE_SIGNATURE,
          fn=lambda images: {features.PREDICTION_KEY: probabilities(images)},
          input_signature=[image_input])
  reason = explain.unsupported_reason(model)
  if reason:
    logging.warning('No %s signature: %s.', explain.GRADCAM_SIGNATURE, reason)
  else:
    grad_model = explain.gradcam_model(model)

    def serve_gradcam(images):
      probabilities, heatmap = explain.gradcam(grad_model, images)
      return {features.PREDICTION_KEY: probabilities,
              explain.HEATMAP_KEY: heatmap}

    archive.add_endpoint(
        name=explain.GRADCAM_SIGNATURE, fn=serve_gradcam,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3],
                                       tf.float32, name='images')])
  archive.write_out(export_dir, verbose=False)
