"""Custom TFX components of the skin-lesion pipeline.

``components.TFLiteModel`` is the TFLite artifact type, re-exported here
because Kubeflow / Vertex name a custom artifact type by a KFP schema title,
which must be ``<module>.<Class>`` (one dot), and TFX's container entrypoint
imports the class from that title.  The re-export is lazy so that importing
one component does not import the TFLite exporter.
"""


def __getattr__(name):
  if name == 'TFLiteModel':
    from components import tflite_exporter  # pylint: disable=g-import-not-at-top
    return tflite_exporter.TFLiteModel
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
