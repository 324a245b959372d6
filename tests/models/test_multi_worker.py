"""Distributed training: strategy choice, and two CPU workers for real.

The two-worker test starts two processes on localhost with a TF_CONFIG each
(as Vertex AI and Kubeflow's TFJob do), both running models.trainer.run_fn
on the tiny TFRecords with the config of the single-worker ``trained_model``
fixture, and compares what they leave behind with that single-worker run.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models import explain
from models import export
from models import features
from models import preprocessing
from models import trainer
from pipeline import configs
from tests.conftest import PROJECT_ROOT
from tests.conftest import TINY_IMAGE_SIZE

WORKER_TIMEOUT_S = 300


def _tf_config(workers, task_type, index, chief=()):
  cluster = {'worker': list(workers)}
  if chief:
    cluster['chief'] = list(chief)
  return {'cluster': cluster, 'task': {'type': task_type, 'index': index}}


def test_cluster_task_and_chief_from_tf_config():
  assert trainer.cluster_task({}) == (1, 'chief', 0)
  assert trainer.is_chief({})
  two = ['h0:1', 'h1:1']
  assert trainer.cluster_task(_tf_config(two, 'worker', 1)) == (2, 'worker', 1)
  assert trainer.is_chief(_tf_config(two, 'worker', 0))
  assert not trainer.is_chief(_tf_config(two, 'worker', 1))
  # With a chief task, worker 0 is not the chief.
  with_chief = _tf_config(two, 'worker', 0, chief=['c:1'])
  assert trainer.cluster_task(with_chief)[0] == 3
  assert not trainer.is_chief(with_chief)
  assert trainer.is_chief(_tf_config(two, 'chief', 0, chief=['c:1']))
  # Vertex AI sets a TF_CONFIG naming only the chief on single-replica jobs.
  assert trainer.cluster_task(_tf_config([], 'chief', 0, chief=['c:1']))[0] == 1


def test_one_worker_keeps_the_default_strategy():
  # This machine has no GPU: one worker, one device, TensorFlow's default.
  strategy = trainer.distribution_strategy({})
  assert strategy is tf.distribute.get_strategy()
  assert strategy.num_replicas_in_sync == 1


def test_a_cluster_with_an_empty_job_is_refused_before_tensorflow_sees_it():
  config = _tf_config(['h0:1', 'h1:1'], 'worker', 0)
  config['cluster']['chief'] = []
  with pytest.raises(ValueError, match=r"jobs without tasks: \['chief'\]"):
    trainer.distribution_strategy(config)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture(scope='module')
def two_workers(tiny_tfrecords, tmp_path_factory):
  """Runs run_fn on two workers; returns (FnArgs fields, [(rc, log)])."""
  out = tmp_path_factory.mktemp('two_workers')
  # The trained_model fixture's config: its model is the reference.
  config = configs.Settings(image_size=TINY_IMAGE_SIZE, epochs=2, width=0.25,
                            batch_size=16).trainer_config()
  fn_args = {'train_files': [tiny_tfrecords[0]],
             'eval_files': [tiny_tfrecords[1]],
             'serving_model_dir': str(out / 'serving'),
             'model_run_dir': str(out / 'run'), 'custom_config': config}
  workers = [f'localhost:{port}' for port in _free_ports(2)]
  procs = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, CUDA_VISIBLE_DEVICES='',
               TF_CPP_MIN_LOG_LEVEL='2',
               TF_CONFIG=json.dumps(_tf_config(workers, 'worker', index)))
    log = open(out / f'worker-{index}.log', 'w+')  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(
        [sys.executable, '-m', 'tests.models.multi_worker_main',
         json.dumps(fn_args)], cwd=PROJECT_ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT), log))
  results = []
  for proc, log in procs:
    try:
      rc = proc.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for other, _ in procs:
        other.kill()
      rc = 'timeout'
    log.seek(0)
    results.append((rc, log.read()))
    log.close()
  return fn_args, results


def _history(run_dir):
  with open(os.path.join(run_dir, trainer.HISTORY_FILE)) as f:
    return json.load(f)


def test_both_workers_finish_in_lockstep(two_workers):
  fn_args, results = two_workers
  for index, (rc, log) in enumerate(results):
    assert rc == 0, f'worker {index} failed:\n{log[-6000:]}'
  chief = _history(fn_args['model_run_dir'])
  other = _history(os.path.join(fn_args['model_run_dir'],
                                trainer.WORKER_RUN_SUBDIR, 'worker-1'))
  assert chief['distribution'] == {
      'strategy': 'KerasMultiWorkerMirroredStrategy', 'workers': 2,
      'replicas': 2, 'task': 'worker-0', 'chief': True,
      'weights_sha256': chief['distribution']['weights_sha256']}
  assert other['distribution']['task'] == 'worker-1'
  assert other['distribution']['chief'] is False
  # Gradients are all-reduced and epoch metrics summed over both workers:
  # the two processes saw the same losses and ended with the same weights.
  assert len(chief['history']['loss']) == 2
  assert chief['history'] == other['history']
  assert (chief['distribution']['weights_sha256']
          == other['distribution']['weights_sha256'])
  # Each fitted the same temperature on the same eval split.
  assert chief['calibration'] == other['calibration']


def test_only_the_chief_writes_the_model(two_workers):
  fn_args, results = two_workers
  serving = fn_args['serving_model_dir']
  assert sorted(os.listdir(serving)) == ['assets', 'calibration.json',
                                         'fingerprint.pb', 'saved_model.pb',
                                         'variables']
  worker_log = results[1][1]
  scratch = [line.rsplit(' ', 2)[-2].rstrip(',') for line in
             worker_log.splitlines() if 'export written to scratch' in line]
  assert len(scratch) == 1 and not os.path.exists(scratch[0])
  # The chief's history is the run's; the other worker's is under workers/.
  assert sorted(os.listdir(os.path.join(fn_args['model_run_dir'],
                                        trainer.WORKER_RUN_SUBDIR))) == [
                                            'worker-1']


def _signatures(saved_model):
  return {name: (fn.structured_input_signature, fn.structured_outputs)
          for name, fn in saved_model.signatures.items()}


def test_exported_model_behaves_like_the_single_worker_one(
    two_workers, trained_model, tiny_tfrecords, tmp_path):
  fn_args, _ = two_workers
  multi = tf.saved_model.load(fn_args['serving_model_dir'])
  single = tf.saved_model.load(trained_model.serving_model_dir)
  # The chief exported the weights both workers ended with, and that export
  # predicts what a single-worker export of those weights predicts: the
  # registry model built without a strategy, given the exported variables
  # (temperature already folded), exported by the same function.
  config = fn_args['custom_config']
  rebuilt = trainer.build_model(config, len(configs.LABELS),
                                synchronized_batch_norm=False,
                                policy='float32')
  assert len(rebuilt.variables) == len(multi.variables)
  for target, value in zip(rebuilt.variables, multi.variables):
    assert tuple(target.shape) == tuple(value.shape), (target.path, value.name)
    target.assign(value.numpy())
  assert trainer.weights_fingerprint(rebuilt) == _history(
      fn_args['model_run_dir'])['distribution']['weights_sha256']
  single_worker_export = str(tmp_path / 'single_worker_export')
  export.export_serving_model(rebuilt, single_worker_export,
                              int(config['image_size']))
  reference = tf.saved_model.load(single_worker_export)
  # The same serving interface: signature names, input and output specs.
  assert _signatures(multi) == _signatures(single)
  assert set(multi.signatures) == {features.EXAMPLE_SIGNATURE,
                                   features.IMAGE_SIGNATURE,
                                   explain.GRADCAM_SIGNATURE}
  serialized = [r.numpy() for r in
                preprocessing.read_examples([tiny_tfrecords[1]]).take(8)]
  jpegs = [tf.train.Example.FromString(s).features.feature[features.IMAGE_KEY]
           .bytes_list.value[0] for s in serialized]
  images = preprocessing.decode_batch(tf.constant(jpegs), TINY_IMAGE_SIZE)
  for model in (multi, single):
    by_example = model.signatures[features.EXAMPLE_SIGNATURE](
        examples=tf.constant(serialized))[features.PREDICTION_KEY].numpy()
    by_image = model.signatures[features.IMAGE_SIGNATURE](
        images=images)[features.PREDICTION_KEY].numpy()
    assert by_example.shape == (8, len(configs.LABELS))
    np.testing.assert_allclose(by_example.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(by_example, by_image, atol=1e-5)
    by_gradcam = model.signatures[explain.GRADCAM_SIGNATURE](
        images=images)[features.PREDICTION_KEY].numpy()
    np.testing.assert_allclose(by_gradcam, by_image, atol=1e-5)
  for name, inputs in ((features.EXAMPLE_SIGNATURE,
                        {'examples': tf.constant(serialized)}),
                       (features.IMAGE_SIGNATURE, {'images': images}),
                       (explain.GRADCAM_SIGNATURE, {'images': images})):
    got = multi.signatures[name](**inputs)
    want = reference.signatures[name](**inputs)
    assert set(got) == set(want)
    for key in got:
      np.testing.assert_allclose(got[key].numpy(), want[key].numpy(),
                                 atol=1e-6, err_msg=f'{name} {key}')
