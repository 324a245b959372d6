"""One worker of tests/models/test_multi_worker.py: runs run_fn, nothing else.

  TF_CONFIG=... python -m tests.models.multi_worker_main FN_ARGS_JSON

FN_ARGS_JSON holds FnArgs' fields (file lists, output folders, the custom
config); the cluster and this worker's place in it come from TF_CONFIG, as on
Vertex AI or under Kubeflow's TFJob.
"""

import json
import sys

from absl import logging


def main(argv):
  from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top
  from models import trainer  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  trainer.run_fn(FnArgs(**json.loads(argv[1])))


if __name__ == '__main__':
  main(sys.argv)
