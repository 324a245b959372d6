"""Model registry: name -> builder(num_classes, image_size, **options)."""

from typing import Callable, Dict

import keras

from models import cnn_baseline

MODELS: Dict[str, Callable[..., keras.Model]] = {
    'cnn_baseline': cnn_baseline.build,
}


def build(name: str, num_classes: int, image_size: int, **options) -> keras.Model:
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODELS)}')
  return MODELS[name](num_classes=num_classes, image_size=image_size, **options)
