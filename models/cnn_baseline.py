"""The CNN baseline of reference R5 (ISIC 2019 notebook).

Three blocks of [Conv 3x3 -> BatchNorm -> ReLU] x 2 with 32, 64, 128 filters,
each ending in 2x2 max-pooling and dropout 0.15 / 0.20 / 0.25; global average
pooling; Dense 256 ReLU; dropout 0.3; softmax.  The last block's final
ReLU output is the layer ``feature_map`` (Grad-CAM's, see models/explain.py).  ``width`` scales every layer's
size (1.0 is R5's network) so the demo fits 2 CPU cores.
"""

import keras

from models import augmentation
from models import color

BLOCK_FILTERS = (32, 64, 128)
BLOCK_DROPOUT = (0.15, 0.20, 0.25)
DENSE_UNITS = 256
HEAD_DROPOUT = 0.3
# Keras' default (0.99) leaves the moving statistics far from the data's
# after the few hundred steps a small dataset gives, and the model then
# predicts one class at inference; 0.9 converges in tens of steps.
BN_MOMENTUM = 0.9
FEATURE_MAP = 'feature_map'


def conv_features(x, width: float = 1.0, synchronized_batch_norm: bool = False):
  """R5's three conv blocks on x (the last ReLU output is ``feature_map``)."""
  for block, (filters, rate) in enumerate(zip(BLOCK_FILTERS, BLOCK_DROPOUT)):
    filters = max(8, int(round(filters * width)))
    for conv in range(2):
      x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False,
                              name=f'block{block + 1}_conv{conv + 1}')(x)
      x = keras.layers.BatchNormalization(
          momentum=BN_MOMENTUM, synchronized=synchronized_batch_norm,
          name=f'block{block + 1}_bn{conv + 1}')(x)
      x = keras.layers.ReLU(name=f'block{block + 1}_relu{conv + 1}')(x)
    if block == len(BLOCK_FILTERS) - 1:
      # The last convolution's output: what Grad-CAM explains
      # (models/explain.py), before the last max-pooling: twice the
      # resolution of the map global pooling reads.  Every registry model has
      # a layer of this name (the Grad-CAM contract).
      x = keras.layers.Identity(name=FEATURE_MAP)(x)
    x = keras.layers.MaxPooling2D(2, name=f'block{block + 1}_pool')(x)
    x = keras.layers.Dropout(rate, name=f'block{block + 1}_dropout')(x)
  return x


def build(num_classes: int, image_size: int, width: float = 1.0,
          synchronized_batch_norm: bool = False, dropout: float = HEAD_DROPOUT,
          augment: dict = None, color_constancy: str = 'none',
          **unused) -> keras.Model:
  """Input: float32 [N, S, S, 3] in [0, 1]. Output: class probabilities.

  ``synchronized_batch_norm``: normalize with the statistics of the whole
  global batch, all-reduced over the replicas, instead of each replica's
  share; the Trainer sets it when it trains on several replicas.  Keras 3
  keeps BatchNormalization's moving statistics per replica (unlike tf.keras,
  it does not average them), so without it the workers of a multi-worker run
  end with different moving statistics and the exported model holds the
  chief's alone.

  ``augment``: augmentation.layers' options (default: random flips, R5's
  network with the demo's augmentation); active in training only.

  ``color_constancy``: models/color.py's method on the input (first layer,
  training and inference).
  """
  del unused
  inputs = keras.Input((image_size, image_size, 3), name='image')
  x = color.apply(inputs, color_constancy)
  x = augmentation.apply(x, **(augment if augment is not None else {}))
  x = conv_features(x, width, synchronized_batch_norm)
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  x = keras.layers.Dense(max(16, int(round(DENSE_UNITS * width))),
                         activation='relu', name='dense')(x)
  x = keras.layers.Dropout(dropout, name='head_dropout')(x)
  outputs = keras.layers.Dense(num_classes, activation='softmax',
                               dtype='float32', name='probabilities')(x)
  return keras.Model(inputs, outputs, name='cnn_baseline')
