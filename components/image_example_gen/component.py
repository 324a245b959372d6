"""The ImageExampleGen component: a FileBasedExampleGen with our executor."""

from typing import Dict, Optional, Sequence

from google.protobuf import struct_pb2
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.image_example_gen.executor import Executor
from components.image_example_gen.layouts import INPUT_PATTERNS
from components.image_example_gen.layouts import LISTERS
from models import features


class ImageExampleGen(FileBasedExampleGen):
  """Ingests a dermoscopy image archive into lesion-disjoint splits."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str, layout: str, labels: Sequence[str],
               split_buckets: Dict[str, int],
               label_map: Optional[Dict[str, str]] = None,
               max_pixels: int = 50_000_000,
               max_quarantine_fraction: float = 0.05,
               span_folder: str = '',
               require_every_class_in_every_split: bool = True):
    """Args:
      input_base: the archive's root folder.
      layout: one of 'ham10000', 'isic2019', 'folders', 'csv'.
      labels: the canonical label list; a label's index is its int64 label.
      split_buckets: split name -> hash buckets (relative split size).
      label_map: source label -> canonical label (e.g. {'AK': 'akiec'}).
      max_pixels: images with more pixels are quarantined (decompression
        bombs).
      max_quarantine_fraction: the run fails above this quarantined share.
      span_folder: e.g. 'span-{SPAN}': each span is a folder of input_base in
        the layout; the newest span is ingested (TFX span semantics).
      require_every_class_in_every_split: fail when a class has no example
        in some split.
    """
    if layout not in LISTERS:
      raise ValueError(f'layout must be one of {sorted(LISTERS)}: {layout!r}')
    struct = struct_pb2.Struct()
    struct.update({'layout': layout, 'labels': list(labels),
                   'label_map': dict(label_map or {}),
                   'max_pixels': max_pixels,
                   'max_quarantine_fraction': max_quarantine_fraction,
                   'require_every_class_in_every_split':
                       require_every_class_in_every_split})
    custom_config = example_gen_pb2.CustomConfig()
    custom_config.custom_config.Pack(struct)
    pattern = INPUT_PATTERNS[layout]
    if span_folder:
      pattern = f'{span_folder.rstrip("/")}/{pattern}'
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name='all', pattern=pattern)]),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=n,
                                                          hash_buckets=b)
                        for n, b in split_buckets.items()],
                partition_feature_name=features.LESION_ID_KEY)),
        custom_config=custom_config)
