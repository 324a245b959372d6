"""Keras metrics the Trainer monitors."""

import keras
from keras import ops


@keras.saving.register_keras_serializable('skinlesion')
class BalancedAccuracy(keras.metrics.Metric):
  """Mean per-class recall over the classes present in the labels seen.

  The ISIC headline metric; unlike accuracy it is not dominated by the
  majority class (nevi), so early stopping on it does not favour a model that
  ignores rare classes.
  """

  def __init__(self, num_classes: int, name: str = 'balanced_accuracy', **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes
    self.true_positives = self.add_variable(
        shape=(num_classes,), initializer='zeros', name='true_positives')
    self.support = self.add_variable(
        shape=(num_classes,), initializer='zeros', name='support')

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # Balanced accuracy weighs classes, not examples.
    y_true = ops.cast(ops.reshape(y_true, (-1,)), 'int32')
    y_hat = ops.cast(ops.argmax(y_pred, axis=-1), 'int32')
    true_onehot = ops.one_hot(y_true, self.num_classes)
    hit = ops.cast(ops.equal(y_true, y_hat), 'float32')
    self.support.assign_add(ops.sum(true_onehot, axis=0))
    self.true_positives.assign_add(ops.sum(true_onehot * hit[:, None], axis=0))

  def result(self):
    present = ops.cast(self.support > 0, 'float32')
    recall = self.true_positives / ops.maximum(self.support, 1.0)
    return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

  def reset_state(self):
    self.true_positives.assign(ops.zeros((self.num_classes,)))
    self.support.assign(ops.zeros((self.num_classes,)))

  def get_config(self):
    return {**super().get_config(), 'num_classes': self.num_classes}
