"""Custom TFX components of the skin-lesion pipeline.

The custom artifact types are re-exported here because Kubeflow / Vertex
name a custom artifact type by a KFP schema title, which must be
``<module>.<Class>`` (one dot), and TFX's container entrypoint imports the
class from that title: each type's TYPE_NAME is ``components.<Class>``.  The
re-export is lazy so that importing one component does not import the others.
"""

_ARTIFACT_TYPES = {
    'DataCharts': 'data_report',
    'MobileModels': 'mobile_exporter',
    'RunReport': 'run_report',
}


def __getattr__(name):
  if name in _ARTIFACT_TYPES:
    import importlib  # pylint: disable=g-import-not-at-top
    module = importlib.import_module(f'components.{_ARTIFACT_TYPES[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
