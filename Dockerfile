# The pipeline's container image: the official TFX 1.16 image plus this
# project, installed with the pinned versions of requirements.lock.
#
# Kubeflow Pipelines and Vertex AI Pipelines run every component in it
# (pipeline/kubeflow_runner.py), and it is a Beam SDK harness image too (its
# entrypoint is Beam's boot), so Dataflow (--sdk_container_image), Flink and
# Spark (--environment_type=DOCKER) workers can run the same code.
#
#   docker build -t REGISTRY/skin-lesion-tfx:$(git rev-parse --short HEAD) .
#   docker push REGISTRY/skin-lesion-tfx:$(git rev-parse --short HEAD)
#
# Tag every build uniquely: Kubeflow and Vertex key their cache on the image
# name.  Not built on the development machines (no Docker engine there):
# README.md, "Running at scale", says what was verified.

ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0
ARG BEAM_SDK_IMAGE=apache/beam_python3.10_sdk:2.61.0

# Beam's SDK harness (boot) of the pinned Beam release.
FROM ${BEAM_SDK_IMAGE} AS beam_sdk

FROM ${TFX_IMAGE}
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

# tflite-support (the TFLiteExporter) needs libusb.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libusb-1.0-0 \
 && rm -rf /var/lib/apt/lists/*

# The project lives here: pipeline/kubeflow_runner.py and Dataflow's
# --setup_file=./setup.py rely on this path (configs.PROJECT_DIR_IN_IMAGE).
WORKDIR /pipeline

# Dependencies first, so that code changes reuse this layer.
COPY requirements.lock ./
RUN python -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version' \
 && python -m pip install --no-cache-dir --no-deps -r requirements.lock

COPY setup.py ./
COPY tools/check_lock.py tools/
COPY pipeline/ pipeline/
COPY components/ components/
COPY models/ models/
COPY mobile_export/ mobile_export/
RUN python -m pip install --no-cache-dir --no-deps . \
 && python tools/check_lock.py requirements.lock \
 && python -c 'import components.image_example_gen.component, components.mobile_exporter, models.trainer, pipeline.pipeline'

# The installed copy (outside /pipeline) has the run report's templates.
RUN cd / && python -c "import os; from components.run_report import render as r; \
assert not r.TEMPLATES_DIR.startswith('/pipeline'), r.TEMPLATES_DIR; \
assert all(os.path.exists(os.path.join(r.TEMPLATES_DIR, f)) for f in r.TEMPLATE_FILES)"

ENTRYPOINT ["/opt/apache/beam/boot"]
