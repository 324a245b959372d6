"""Losses on integer labels and the model's probabilities.

Every registry model ends in a softmax layer (``registry.OUTPUT_LAYER``), so
the losses take probabilities, as Keras' own ``sparse_categorical_
crossentropy`` does, clipped to [epsilon, 1 - epsilon] (Keras'
``keras.config.epsilon()``, 1e-7) before the logarithm.  Since
``log softmax(z) = z - logsumexp(z)``, the log-probabilities are the logits
up to a per-example constant, which every softmax below ignores; the clip
only stops the gradient of a class already given less than 1e-7, as Keras'
own cross-entropy on probabilities does.

``SparseCategoricalAdjustedCrossentropy`` is the cross-entropy with three
optional ingredients (each off at 0): logit adjustment for a long-tailed
label prior, label smoothing, and the focal weight.
``SparseCategoricalFocalLoss`` is the focal case of it.
"""

from typing import Optional, Sequence

import keras
from keras import ops
import numpy as np


@keras.saving.register_keras_serializable('skinlesion')
class SparseCategoricalAdjustedCrossentropy(keras.losses.Loss):
  """Cross-entropy with logit adjustment, label smoothing and focal weight.

  With ``q = softmax(log p + tau * log prior)`` (p the model's
  probabilities) and the smoothed targets ``t = (1 - eps) * onehot(y) +
  eps / K`` over K classes, the loss of an example is

      ``-sum_k t_k * (1 - q_k)^gamma * log q_k``.

  * ``tau`` > 0, logit adjustment (Menon et al., 2021, "Long-tail learning
    via logit adjustment"): the loss is computed on the logits shifted by
    ``tau * log prior`` (``class_prior``: the train split's class
    frequencies), while the model's own output stays ``softmax(z)``: a rare
    class must win by a margin that grows with its rarity, so the unadjusted
    softmax is fitted to the balanced error (tau = 1: Bayes-optimal for
    balanced accuracy).  Class weights or balanced sampling would correct
    the prior a second time (configs.Settings refuses the combination).
  * ``label_smoothing`` eps in [0, 1): ``(1 - eps) * CE + eps * mean_k
    (-log q_k)``; keeps the logits finite and the network less
    over-confident.
  * ``gamma`` > 0: the focal weight (Lin et al., 2017) of each term;
    gamma = 0 is the cross-entropy.
  """

  def __init__(self, class_prior: Optional[Sequence[float]] = None,
               tau: float = 0.0, label_smoothing: float = 0.0,
               gamma: float = 0.0, name: str = 'adjusted_crossentropy',
               **kwargs):
    super().__init__(name=name, **kwargs)
    if tau < 0 or not 0 <= label_smoothing < 1 or gamma < 0:
      raise ValueError(f'tau and gamma must be >= 0 and label_smoothing in '
                       f'[0, 1): tau={tau}, label_smoothing={label_smoothing}'
                       f', gamma={gamma}')
    if tau and (class_prior is None or min(class_prior) <= 0):
      raise ValueError('logit adjustment (tau > 0) needs a class_prior with '
                       f'every class above 0, got {class_prior}')
    self.class_prior = (None if class_prior is None
                        else [float(c) for c in class_prior])
    self.tau = float(tau)
    self.label_smoothing = float(label_smoothing)
    self.gamma = float(gamma)

  def call(self, y_true, y_pred):
    y_true = ops.cast(ops.reshape(y_true, (-1,)), 'int32')
    probs = ops.clip(ops.cast(y_pred, 'float32'), keras.config.epsilon(),
                     1.0 - keras.config.epsilon())
    log_q = ops.log(probs)
    num_classes = ops.shape(probs)[-1]
    if self.tau:
      log_prior = np.log(np.asarray(self.class_prior, 'float32'))
      log_q = ops.log_softmax(log_q + self.tau * log_prior, axis=-1)
    targets = ops.one_hot(y_true, num_classes)
    if self.label_smoothing:
      targets = (targets * (1.0 - self.label_smoothing)
                 + self.label_smoothing / ops.cast(num_classes, 'float32'))
    terms = -targets * log_q
    if self.gamma:
      terms = terms * ops.power(1.0 - ops.exp(log_q), self.gamma)
    return ops.sum(terms, axis=-1)

  def get_config(self):
    return {**super().get_config(), 'class_prior': self.class_prior,
            'tau': self.tau, 'label_smoothing': self.label_smoothing,
            'gamma': self.gamma}


@keras.saving.register_keras_serializable('skinlesion')
class SparseCategoricalFocalLoss(SparseCategoricalAdjustedCrossentropy):
  """Focal loss (Lin et al., 2017) on integer labels and probabilities.

  ``-(1 - p_t)^gamma * log(p_t)``, p_t the probability of the true class:
  well-classified (mostly majority-class) examples contribute less, so the
  rare classes weigh more without explicit class weights.  gamma = 0 is the
  cross-entropy.  ``label_smoothing`` smooths the targets as in
  SparseCategoricalAdjustedCrossentropy.
  """

  def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.0,
               name: str = 'focal_loss', **kwargs):
    kwargs.pop('class_prior', None)
    kwargs.pop('tau', None)
    super().__init__(gamma=gamma, label_smoothing=label_smoothing, name=name,
                     **kwargs)
