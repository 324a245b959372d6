"""Losses for imbalanced classes."""

import keras
from keras import ops


@keras.saving.register_keras_serializable('skinlesion')
class SparseCategoricalFocalLoss(keras.losses.Loss):
  """Focal loss (Lin et al., 2017) on integer labels and probabilities.

  ``-(1 - p_t)^gamma * log(p_t)``, p_t the probability of the true class:
  well-classified (mostly majority-class) examples contribute less, so the
  rare classes weigh more without explicit class weights.  gamma = 0 is the
  cross-entropy.
  """

  def __init__(self, gamma: float = 2.0, name: str = 'focal_loss', **kwargs):
    super().__init__(name=name, **kwargs)
    self.gamma = gamma

  def call(self, y_true, y_pred):
    y_true = ops.cast(ops.reshape(y_true, (-1,)), 'int32')
    y_pred = ops.cast(y_pred, 'float32')
    probs = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
    p_true = ops.sum(probs * ops.one_hot(y_true, ops.shape(probs)[-1]), axis=-1)
    return -ops.power(1.0 - p_true, self.gamma) * ops.log(p_true)

  def get_config(self):
    return {**super().get_config(), 'gamma': self.gamma}
