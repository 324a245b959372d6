"""RunReporter: the TFX component writing the run report (see the package)."""

import os

from absl import logging
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.data_report import DataCharts
from components.mobile_exporter import MobileModels
from components.run_report.metrics import DEFAULT_MELANOMA
from components.run_report.builder import (
    REPORT_FILE,
    MODEL_CARD_MD,
    ReportInputs,
    build_report)


class RunReport(types.Artifact):
  """report.html, model_card.md / .html and report.json of one run.

  Custom properties: ``blessed`` and ``pushed`` (0/1), ``report`` (path of
  report.html), ``model_card`` (path of model_card.md).
  """
  TYPE_NAME = 'components.RunReport'


@component
def RunReporter(
    examples: InputArtifact[standard_artifacts.Examples],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    model: InputArtifact[standard_artifacts.Model],
    report: OutputArtifact[RunReport],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies] = None,
    charts: InputArtifact[DataCharts] = None,
    model_run: InputArtifact[standard_artifacts.ModelRun] = None,
    mobile_models: InputArtifact[MobileModels] = None,
    pushed_model: InputArtifact[standard_artifacts.PushedModel] = None,
    gate_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    pipeline_name: Parameter[str] = 'skin-lesion-tfx',
    split: Parameter[str] = 'test',
    gradcam_per_class: Parameter[int] = 2,
    melanoma_label: Parameter[str] = DEFAULT_MELANOMA) -> None:
  """Writes the run's HTML report and model card (see the module docstring).

  Runs whether or not the model was blessed or pushed: the exporter's,
  pusher's and gap gate's outputs are optional inputs.
  """
  numbers = build_report(
      ReportInputs(examples=examples, evaluation=evaluation,
                   blessing=blessing, model=model, statistics=statistics,
                   anomalies=anomalies, charts=charts, model_run=model_run,
                   mobile_models=mobile_models, pushed_model=pushed_model,
                   gate_blessing=gate_blessing),
      report.uri, pipeline_name=pipeline_name, split=split,
      gradcam_per_class=gradcam_per_class, melanoma_label=melanoma_label)
  report.set_int_custom_property('blessed',
                                 int(bool(numbers['blessing']['blessed'])))
  report.set_int_custom_property('pushed',
                                 int(bool(numbers['pushed']['pushed'])))
  report.set_string_custom_property(
      'report', os.path.join(report.uri, REPORT_FILE))
  report.set_string_custom_property(
      'model_card', os.path.join(report.uri, MODEL_CARD_MD))
  logging.info('Run report: %s', os.path.join(report.uri, REPORT_FILE))
