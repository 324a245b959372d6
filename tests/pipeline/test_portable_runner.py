"""Ingestion and statistics through Beam's portable runner, for real.

Flink and Spark run Beam pipelines the portable way: the launcher submits the
pipeline (as a Runner API proto) to a job service through the Job API, stages
its artifacts there, and SDK harnesses run the Python code over the Fn API.
This test does the same on one machine, offline: Beam's own Python job
service (LocalJobServicer) on a gRPC port in this process, PortableRunner
submitting to it, and a LOOPBACK environment (this process is the SDK
harness).  The pipeline's ImageExampleGen and StatisticsGen executors run
once with DirectRunner and once that way; the outputs must be the same.
"""

import json
import os

import apache_beam  # pylint: disable=unused-import  (before the submodules)
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import local_job_service
import pytest
import tensorflow as tf

from components import image_example_gen
from pipeline import beam_args
from pipeline import configs
from tests.pipeline.beam_stages import run_stages
from tests.pipeline.beam_stages import split_examples
from tests.pipeline.beam_stages import split_statistics
from tests.pipeline.beam_stages import SPLITS


@pytest.fixture(scope='module')
def runs(tiny_archive, tmp_path_factory):
  """(DirectRunner output dir, PortableRunner output dir, the job service's
  jobs)."""
  out = tmp_path_factory.mktemp('portable')
  settings = configs.Settings(data_root=tiny_archive, home=str(out / 'home'),
                              require_every_class_in_every_split=False)
  direct = run_stages(settings, configs.BEAM_PIPELINE_ARGS, out / 'direct')
  job_service = local_job_service.LocalJobServicer()
  port = job_service.start_grpc_server(0)
  try:
    portable = run_stages(
        settings, beam_args.portable_beam_args(f'localhost:{port}',
                                             environment_type='LOOPBACK'),
        out / 'portable')
    jobs = job_service.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info
  finally:
    job_service.stop()
  return direct, portable, jobs


def test_both_stages_ran_as_jobs_of_the_job_service(runs):
  _, _, jobs = runs
  # One Beam pipeline per executor, each submitted through the Job API.
  assert len(jobs) == 2
  assert all(job.state == beam_job_api_pb2.JobState.DONE for job in jobs)


def _examples(root):
  return split_examples(os.path.join(root, 'examples'))


def test_examples_and_report_are_the_direct_runners(runs, tiny_archive):
  direct, portable, _ = runs
  examples = _examples(portable)
  assert examples == _examples(direct)
  with open(os.path.join(tiny_archive, image_example_gen.HAM10000_CSV)) as f:
    assert sum(map(len, examples.values())) == sum(1 for _ in f) - 1
  reports = []
  for root in (direct, portable):
    with open(os.path.join(root, 'examples',
                           image_example_gen.REPORT_FILE)) as f:
      report = json.load(f)
    # Where each run wrote its quarantine differs; everything else must not.
    assert report.pop('quarantine_file').startswith(root)
    reports.append(report)
  assert reports[0] == reports[1]


def test_statistics_are_the_direct_runners(runs):
  direct, portable, _ = runs
  examples = _examples(portable)
  for split in SPLITS:
    stats = [split_statistics(os.path.join(root, 'statistics'), split)
             for root in (direct, portable)]
    assert stats[0] == stats[1], split
    # ... and they describe the split's examples.
    dataset = stats[1].datasets[0]
    assert dataset.num_examples == len(examples[split]) > 0
    keys = set(tf.train.Example.FromString(examples[split][0])
               .features.feature)
    assert {f.path.step[0] for f in dataset.features} >= keys
