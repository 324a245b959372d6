"""`skinlesion serve`: the try-it page, over HTTP and in headless Chromium.

The served version holds the session's trained SavedModel (cnn_baseline,
temperature scaled, with the serving_gradcam signature) and a float16
.tflite, published as MobilePusher lays a version out, with a manifest
whose blessing section names gates and values.
"""

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from werkzeug import test as werkzeug_test

from mobile_export import release
from models import calibration
from models import explain
from models import features
from models import preprocessing
from pipeline import cli
from pipeline import configs
from pipeline import predict
from pipeline import serve
from tests.conftest import PROJECT_ROOT
from tests.conftest import TINY_IMAGE_SIZE
from tests.conftest import headless_chromium
from tests.conftest import publish
from tests.conftest import save_full_page_screenshot
from tests.conftest import severe_console_entries
from tests.conftest import write_split_jpegs

MAX_UPLOAD = 256 * 1024
BLESSING = {
    'evaluator_blessed': True, 'interval_gate_blessed': True,
    'compared_with_baseline': False,
    'gates': [{'metric': 'balanced_accuracy', 'slices': 'overall',
               'threshold': '>= 0.35', 'value': 0.6167, 'passed': True},
              {'metric': 'melanoma_recall', 'slices': 'overall',
               'threshold': '>= 0.5', 'value': 0.7895, 'passed': True}],
    'test_metrics': {'balanced_accuracy': 0.6167, 'accuracy': 0.6308,
                     'expected_calibration_error': 0.0412,
                     'example_count': 130},
    'interval_gates': [
        {'gate': 'subgroup', 'slice_family': 'sex',
         'metric': 'mean recall over the classes with enough images',
         'failed_groups': [], 'bound': 0.1, 'confidence': 0.9875,
         'passed': True,
         'note': 'worst male: difference -0.031 [-0.140, 0.070], not '
                 'wholly below -0.100'},
        {'gate': 'regression', 'metric': 'balanced_accuracy',
         'difference': {'value': 0.012, 'lower': -0.021, 'upper': 0.044},
         'bound': 0.02, 'confidence': 0.95, 'passed': True, 'note': ''}],
    'test_intervals': {'balanced_accuracy': {'value': 0.6167, 'lower': 0.5512,
                                             'upper': 0.6801}},
    'calibration': {'method': 'temperature', 'temperature': 1.7,
                    'fitted_temperature': 1.7, 'applied': True},
}
METRICS = {'split': 'test', 'saved_model': {
    'examples': 130, 'accuracy': 0.6308, 'balanced_accuracy': 0.6167,
    'per_class_recall': {label: 0.5 for label in configs.LABELS}}}


@pytest.fixture(scope='module')
def version(trained_model, tiny_tfrecords, tmp_path_factory):
  """(version dir, [test JPEG paths])."""
  base = str(tmp_path_factory.mktemp('serving'))
  latest = publish(base, '7', trained_model.serving_model_dir,
                   blessing=BLESSING, metrics=METRICS)
  images = write_split_jpegs(tiny_tfrecords[1],
                             str(tmp_path_factory.mktemp('images')))
  return latest, [path for path, _ in images[:4]]


def _start(app):
  server = serve.make_server(app, port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server


@pytest.fixture(scope='module')
def tryit(version):
  """The page's logic on the SavedModel (uploads up to 256 KB)."""
  return serve.TryIt(predict.PushedModel(version[0]),
                     max_upload_bytes=MAX_UPLOAD)


@pytest.fixture(scope='module')
def client(tryit):
  """The WSGI app without a server (werkzeug.test.Client)."""
  return werkzeug_test.Client(serve.WsgiApp(tryit))


@pytest.fixture(scope='module')
def url(tryit):
  """An in-process threaded server of the same app, on a free port."""
  server = _start(tryit)
  yield serve.url_of(server)
  server.shutdown()
  server.server_close()


def _request(url, path, body=None, headers=None, method=None):
  request = urllib.request.Request(url.rstrip('/') + path, data=body,
                                   headers=headers or {}, method=method)
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, response.read(), dict(response.headers)
  except urllib.error.HTTPError as e:
    return e.code, e.read(), dict(e.headers)


def _form(filename, data, content_type='image/jpeg', field='image'):
  boundary = 'skinlesionTestBoundary7MA4YWxk'
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
          f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
          ).encode() + data + f'\r\n--{boundary}--\r\n'.encode()
  return body, {'Content-Type': f'multipart/form-data; boundary={boundary}'}


def _page_top(html):
  """[(label, probability)] of the page's top-3 table, in order."""
  return [(m.group(1), float(m.group(2))) for m in re.finditer(
      r'<tr class="top" data-label="([^"]+)" data-probability="([^"]+)">',
      html)]


def _error(html):
  found = re.search(r'<p id="error" role="alert">(.*?)</p>', html, re.S)
  return found.group(1) if found else None


def _healthy(url):
  status, body, _ = _request(url, '/healthz')
  return status == 200 and json.loads(body)['status'] == 'ok'


# `predict` batches a folder, the page takes one image: float32 rounding
# differs by batch size (measured: at most 1.7e-7).
BATCH_ROUNDING = 1e-6


def test_top3_equals_skinlesion_predict_on_the_same_files(url, version):
  version_dir, images = version
  expected = predict.predict(version_dir, images)
  for path, row in zip(images, expected.probabilities):
    with open(path, 'rb') as f:
      data = f.read()
    status, body, _ = _request(url, '/api/predict', data,
                               {'X-Filename': os.path.basename(path)})
    assert status == 200, body
    answer = json.loads(body)
    order = np.argsort(-row, kind='stable')[:3]
    assert [t['label'] for t in answer['top']] == [
        expected.labels[i] for i in order]
    np.testing.assert_allclose([t['probability'] for t in answer['top']],
                               row[order], rtol=0, atol=BATCH_ROUNDING)
    assert answer['gradcam'] and answer['model_version'] == '7'
    # The form answers the same numbers on the page.
    status, html, headers = _request(url, '/', *_form('lesion.jpg', data))
    assert status == 200
    html = html.decode()
    assert [label for label, _ in _page_top(html)] == [
        expected.labels[i] for i in order]
    np.testing.assert_allclose([p for _, p in _page_top(html)], row[order],
                               rtol=0, atol=BATCH_ROUNDING)
    assert 'id="gradcam"' in html
    assert "default-src 'none'" in headers['Content-Security-Policy']


def test_the_trainer_folds_the_temperature_it_records(version,
                                                       tiny_tfrecords):
  """The trained SavedModel answers softmax(log p / T) of the network's p,
  with the T recorded beside it (the fitted one when the fit improved the
  eval split, else 1): undoing that T on the eval split gives the network's
  NLL that the Trainer measured before the fold, and applying the fitted T
  to it the NLL the fit reached."""
  fit = json.loads(open(os.path.join(version[0], 'calibration.json')).read())
  assert fit['method'] == 'temperature' and fit['fitted_temperature'] > 0
  assert fit['temperature'] == (fit['fitted_temperature'] if fit['applied']
                                else 1.0)
  # The fitted T moves the NLL, so serving another T than recorded fails.
  assert abs(fit['nll_before'] - fit['nll_after']) > 1e-4, fit
  records = [r.numpy() for r in preprocessing.read_examples(
      [tiny_tfrecords[1]])]
  labels = np.array([tf.train.Example.FromString(r).features.feature[
      features.LABEL_KEY].int64_list.value[0] for r in records])
  assert len(labels) == fit['examples']
  serve_examples = tf.saved_model.load(version[0]).signatures[
      features.EXAMPLE_SIGNATURE]
  served = serve_examples(examples=tf.constant(records))[
      features.PREDICTION_KEY].numpy().astype(np.float64)
  np.testing.assert_allclose(served.sum(1), 1, atol=1e-5)
  network = calibration.scale(served, 1 / fit['temperature'])
  # pylint: disable=protected-access
  assert calibration._scaled_nll(network, labels, 1.0) == pytest.approx(
      fit['nll_before'], abs=1e-4)
  assert calibration._scaled_nll(
      network, labels, fit['fitted_temperature']) == pytest.approx(
          fit['nll_after'], abs=1e-4)


def test_probabilities_are_the_temperature_scaled_ones(version, tmp_path):
  """The page and the API serve softmax(log p / T): p the network's own
  probabilities, computed here with Keras before the temperature is folded
  in (as models/trainer.py folds it), T the one the version records
  (calibration.json beside the SavedModel, and the manifest's
  blessing.calibration, which the page states)."""
  from models import export  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  tf.keras.utils.set_random_seed(5)
  network = registry.build('cnn_baseline', num_classes=len(configs.LABELS),
                           image_size=TINY_IMAGE_SIZE, width=0.25)
  # Confident logits (an untrained network is near uniform), so that the
  # temperature visibly moves the numbers.
  layer = network.get_layer(registry.OUTPUT_LAYER)
  layer.set_weights([w * 20 for w in layer.get_weights()])
  jpegs = [open(path, 'rb').read() for path in version[1]]
  pixels = tf.stack([preprocessing.decode_and_resize(tf.constant(j),
                                                     TINY_IMAGE_SIZE)
                     for j in jpegs])
  untempered = network(preprocessing.to_model_input(pixels),
                       training=False).numpy().astype(np.float64)
  fit = {'method': 'temperature', 'fitted_temperature': 1.7,
         'temperature': 1.7, 'applied': True}
  calibration.fold_temperature(network, fit['temperature'],
                               registry.OUTPUT_LAYER)
  export.export_serving_model(network, str(tmp_path / 'model'),
                              TINY_IMAGE_SIZE)
  calibration.write(str(tmp_path / 'model'), fit)
  version_dir = publish(str(tmp_path / 'serving'), '11',
                        str(tmp_path / 'model'), with_tflite=False,
                        blessing={**BLESSING, 'calibration': fit})
  recorded = calibration.read(version_dir)['temperature']
  with open(os.path.join(version_dir, release.MANIFEST_FILE)) as f:
    assert json.load(f)['blessing']['calibration']['temperature'] == recorded
  expected = calibration.scale(untempered, recorded)
  # Serving p itself (T ignored) would be off by a thousand tolerances.
  assert np.abs(expected - untempered).max() > 1e-2
  client = werkzeug_test.Client(serve.WsgiApp(serve.TryIt(
      predict.PushedModel(version_dir))))
  for jpeg, row in zip(jpegs, expected):
    answer = client.post('/api/predict', data=jpeg).get_json()
    np.testing.assert_allclose(
        [answer['probabilities'][k] for k in configs.LABELS], row,
        rtol=0, atol=1e-5)
    html = client.post('/', **_client_form('a.jpg', jpeg)).get_data(
        as_text=True)
    order = np.argsort(-row, kind='stable')[:3]
    assert [label for label, _ in _page_top(html)] == [
        configs.LABELS[i] for i in order]
    np.testing.assert_allclose([p for _, p in _page_top(html)], row[order],
                               rtol=0, atol=1e-5)
    assert f'T = {recorded:.3f}' in html


def test_a_png_is_read_like_ingestion_reads_it(url, version, tmp_path):
  version_dir, images = version
  png = tmp_path / 'lesion.png'
  with Image.open(images[1]) as image:
    image.convert('RGBA').save(png, format='PNG')
  expected = predict.predict(version_dir, [str(png)])
  status, html, _ = _request(url, '/', *_form('lesion.png', png.read_bytes(),
                                              'image/png'))
  assert status == 200, _error(html.decode())
  html = html.decode()
  row = expected.probabilities[0]
  np.testing.assert_allclose([p for _, p in _page_top(html)],
                             np.sort(row)[::-1][:3], atol=1e-7)
  assert 're-encoded as RGB JPEG' in html


def _truncated(images):
  with open(images[0], 'rb') as f:
    data = f.read()
  return data[:len(data) // 2]


def _gif():
  buffer = io.BytesIO()
  Image.new('RGB', (20, 20), (200, 10, 10)).save(buffer, format='GIF')
  return buffer.getvalue()


@pytest.mark.parametrize('case, status, message', [
    ('truncated', 400, 'not a readable JPEG or PNG image'),
    ('text', 400, 'not a readable JPEG or PNG image'),
    ('gif', 400, 'Upload a JPEG or PNG'),
    ('empty', 400, 'is empty (0 bytes)'),
    ('no_file_field', 400, 'No file was uploaded'),
    ('too_large', 413, 'accepts images up to 0.2 MB'),
    ('not_a_form', 400, 'Expected a form upload'),
])
def test_bad_uploads_get_a_clear_message_and_the_server_keeps_running(
    url, version, case, status, message):
  images = version[1]
  if case == 'not_a_form':
    body, headers = b'{"image": 1}', {'Content-Type': 'application/json'}
  elif case == 'no_file_field':
    body, headers = _form('x.jpg', b'abc', field='other')
  else:
    data = {'truncated': lambda: _truncated(images),
            'text': lambda: b'patient notes, not an image\n' * 20,
            'gif': _gif, 'empty': lambda: b'',
            'too_large': lambda: os.urandom(MAX_UPLOAD + 200_000)}[case]()
    body, headers = _form(f'{case}.jpg', data)
  got, html, _ = _request(url, '/', body, headers)
  html = html.decode()
  assert got == status, html[:500]
  assert message in (_error(html) or ''), _error(html)
  assert 'id="upload-form"' in html and 'id="top3"' not in html
  assert '&lt;_io.BytesIO' not in html
  assert _healthy(url)
  # The JSON API says the same.
  if case in ('truncated', 'text', 'gif', 'empty'):
    got, answer, _ = _request(url, '/api/predict', data)
    assert got == status and message in json.loads(answer)['error']


def test_the_page_shows_version_gates_calibration_and_disclaimer(url):
  status, html, _ = _request(url, '/')
  assert status == 200
  html = html.decode()
  assert 'id="model-version">7<' in html
  assert serve.DISCLAIMER.split('.')[0] in html
  for text in ('balanced_accuracy', '&gt;= 0.35', '0.6167', 'melanoma_recall',
               '0.7895', 'subgroup gate across sex',
               'worst male: difference -0.031 [-0.140, 0.070]',
               'regression gate vs the latest blessed model',
               '0.012 [-0.021, 0.044]', '0.617 [0.551, 0.680]',
               'T = 1.700', '0.041'):
    assert text in html, text
  assert 'Melanoma (mel)' in html


def test_it_listens_on_localhost_unless_told(version):
  args = cli.build_parser().parse_args(['serve', '--model', version[0]])
  assert (args.host, args.port) == ('127.0.0.1', configs.SERVE_PORT)
  server = serve.make_server(serve.TryIt(predict.PushedModel(version[0])),
                             port=0)
  try:
    assert server.server_address[0] == '127.0.0.1'
  finally:
    server.server_close()


def test_tflite_is_served_without_an_overlay(version):
  version_dir, images = version
  app = serve.TryIt(predict.PushedModel(version_dir, tflite_format='float16'))
  server = _start(app)
  try:
    with open(images[2], 'rb') as f:
      data = f.read()
    status, html, _ = _request(serve.url_of(server), '/',
                               *_form('a.jpg', data))
  finally:
    server.shutdown()
    server.server_close()
  html = html.decode()
  assert status == 200
  assert 'id="gradcam"' not in html and 'a .tflite model has no gradients' in html
  expected = predict.predict(version_dir, [images[2]], tflite_format='float16')
  np.testing.assert_allclose([p for _, p in _page_top(html)],
                             np.sort(expected.probabilities[0])[::-1][:3],
                             atol=1e-7)


def test_a_tampered_version_is_refused(version, tmp_path, capsys):
  copy = tmp_path / 'v'
  release.publish_version(str(tmp_path), 'v', lambda staging: __import__(
      'shutil').copytree(version[0], staging, dirs_exist_ok=True))
  with open(copy / 'labels.txt', 'a') as f:
    f.write('extra\n')
  assert cli.main(['serve', '--model', str(copy), '--port', '0']) == 1
  assert 'Refusing the model' in capsys.readouterr().err


def _client_form(filename, data, **fields):
  """werkzeug.test.Client keyword arguments for the page's form."""
  return {'data': {'image': (io.BytesIO(data), filename), **fields},
          'content_type': 'multipart/form-data'}


def test_form_upload_is_parsed_in_memory_byte_for_byte():
  """The upload arrives intact (a boundary-like line inside the bytes, a
  space in the name), with the other fields; a photo larger than
  Werkzeug's 500 KB spooling threshold is still held in memory, never in a
  temporary file."""
  data = b'\x00\xff\r\n--not-a-boundary\r\n' + os.urandom(600_000)
  body, headers = _form('a b.jpg', data)
  boundary = headers['Content-Type'].split('boundary=')[1]
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="age"'
          '\r\n\r\n63\r\n').encode() + body
  request = serve.UploadRequest(werkzeug_test.EnvironBuilder(
      method='POST', data=body, content_type=headers['Content-Type']
  ).get_environ())
  assert serve.form_upload(request) == ('a b.jpg', data, {'age': '63'})
  assert isinstance(request.files['image'].stream, io.BytesIO)


def test_every_answer_carries_the_security_headers(client, version):
  jpeg = open(version[1][0], 'rb').read()
  answers = {
      'page': client.get('/'), 'head': client.head('/'),
      'healthz': client.get('/healthz'),
      'result': client.post('/', **_client_form('a.jpg', jpeg)),
      'api': client.post('/api/predict', data=jpeg),
      'bad upload': client.post('/', **_client_form('a.jpg', b'text')),
      'too large': client.post('/api/predict',
                               data=b'x' * (2 * MAX_UPLOAD)),
      'not found': client.get('/nowhere'),
      'wrong method': client.get('/api/predict'),
  }
  statuses = {name: r.status_code for name, r in answers.items()}
  assert statuses == {'page': 200, 'head': 200, 'healthz': 200,
                      'result': 200, 'api': 200, 'bad upload': 400,
                      'too large': 413, 'not found': 404,
                      'wrong method': 405}
  for name, response in answers.items():
    for key, value in serve._SECURITY_HEADERS.items():  # pylint: disable=protected-access
      assert response.headers.get(key) == value, (name, key)
  assert answers['head'].get_data() == b''
  # The standard reason phrases (the browser test's console filter reads it).
  assert answers['bad upload'].status == '400 Bad Request'
  assert answers['too large'].status == '413 Request Entity Too Large'
  assert answers['not found'].get_data() == b'not found\n'
  assert answers['not found'].mimetype == 'text/plain'
  assert answers['wrong method'].headers['Allow'] == 'POST'
  assert answers['healthz'].get_json()['model_version'] == '7'


def test_the_upload_limit(client, version):
  """An image over --max-upload-mb is refused with 413 and its size, on the
  page and on the API: a body far over the limit before it is parsed
  (Request.max_content_length), one just over it after; an oversized form
  field also answers 413."""
  big = os.urandom(MAX_UPLOAD + 1000)
  huge = os.urandom(MAX_UPLOAD + serve.FORM_OVERHEAD + 1)
  for data in (big, huge):
    page = client.post('/', **_client_form('big.jpg', data))
    assert page.status_code == 413
    html = page.get_data(as_text=True)
    assert 'accepts images up to 0.2 MB' in _error(html)
    assert f'The upload is {len(data) / 2**20:.1f} MB' in _error(html)
    api = client.post('/api/predict', data=data)
    assert api.status_code == 413
    assert 'accepts images up to 0.2 MB' in api.get_json()['error']
  field = client.post('/', **_client_form(
      'a.jpg', open(version[1][0], 'rb').read(),
      age='1' * (serve.MAX_FIELD_BYTES + 1)))
  assert field.status_code == 413
  assert 'too large' in _error(field.get_data(as_text=True))


def test_a_slow_upload_does_not_hold_up_other_requests(url):
  """The server is threaded: a client that sends half its upload and
  waits does not keep /healthz waiting."""
  host, port = re.match(r'http://([^:/]+):(\d+)/', url).groups()
  with socket.create_connection((host, int(port)), timeout=30) as slow:
    slow.sendall(b'POST /api/predict HTTP/1.1\r\nHost: x\r\n'
                 b'Content-Length: 100000\r\n\r\n' + b'x' * 1000)
    request = urllib.request.Request(url + 'healthz')
    with urllib.request.urlopen(request, timeout=20) as response:
      assert json.loads(response.read())['status'] == 'ok'


@pytest.fixture(scope='module')
def mixed_version(tmp_path_factory):
  """An untrained mixed_input model (cnn_baseline image branch, 32 px),
  exported with its metadata inputs and published without a .tflite."""
  from models import export  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  tf.keras.utils.set_random_seed(3)
  model = registry.build('mixed_input', num_classes=len(configs.LABELS),
                         image_size=32, backbone='cnn_baseline', width=0.25)
  out = tmp_path_factory.mktemp('mixed')
  export.export_serving_model(model, str(out / 'model'), 32,
                              with_metadata=True)
  return publish(str(out / 'serving'), '3', str(out / 'model'),
                 with_tflite=False)


def test_a_metadata_model_gets_age_sex_and_site_fields(mixed_version,
                                                       version):
  """mixed_input: the form asks for age, sex and site; the answer is the
  SavedModel's serving_default (the Evaluator's path) on a tf.Example with
  the same image and metadata; empty fields are missing, as ingestion
  writes them; an impossible age is refused."""
  from models import features  # pylint: disable=g-import-not-at-top
  model = predict.PushedModel(mixed_version)
  assert model.metadata_keys == features.METADATA_KEYS
  server = _start(serve.TryIt(model))
  address = serve.url_of(server)
  with open(version[1][0], 'rb') as f:
    jpeg = f.read()
  examples = tf.saved_model.load(mixed_version).signatures['serving_default']

  def evaluator_path(**metadata):
    example = tf.train.Example()
    example.features.feature['image'].bytes_list.value.append(jpeg)
    for key, value in metadata.items():
      if isinstance(value, float):
        example.features.feature[key].float_list.value.append(value)
      else:
        example.features.feature[key].bytes_list.value.append(value.encode())
    return examples(examples=tf.constant([example.SerializeToString()]))[
        'probabilities'].numpy()[0]

  try:
    status, html, _ = _request(address, '/')
    html = html.decode()
    for field in ('id="age"', 'id="sex"', 'id="localization"',
                  '<option value="lower extremity">'):
      assert field in html, field
    _, answer, _ = _request(address, '/api/predict?age=63&sex=male'
                            '&localization=back', jpeg)
    answer = json.loads(answer)
    assert answer['metadata'] == {'age': 63.0, 'sex': 'male',
                                  'localization': 'back'}
    np.testing.assert_allclose(
        [answer['probabilities'][k] for k in configs.LABELS],
        evaluator_path(age=63.0, sex='male', localization='back'), atol=1e-6)
    _, missing, _ = _request(address, '/api/predict', jpeg)
    missing = json.loads(missing)
    assert missing['metadata'] == {'age': None, 'sex': 'unknown',
                                   'localization': 'unknown'}
    np.testing.assert_allclose(
        [missing['probabilities'][k] for k in configs.LABELS],
        evaluator_path(), atol=1e-6)
    # The metadata does reach the model.
    assert np.abs(np.array([missing['probabilities'][k] for k in
                            configs.LABELS]) - np.array(
                                [answer['probabilities'][k] for k in
                                 configs.LABELS])).max() > 1e-4
    assert not missing['gradcam'] and 'several inputs' in missing[
        'gradcam_note']
    # The form carries the fields too.
    body, headers = _form('a.jpg', jpeg)
    boundary = headers['Content-Type'].split('boundary=')[1]
    extra = ''.join(f'--{boundary}\r\nContent-Disposition: form-data; '
                    f'name="{k}"\r\n\r\n{v}\r\n' for k, v in
                    (('age', '63'), ('sex', 'male'), ('localization', 'back')))
    status, html, _ = _request(address, '/', extra.encode() + body, headers)
    html = html.decode()
    assert status == 200 and 'With age 63.0, sex male, localization back' in html
    for query, message in (('age=200', 'Age must be a number'),
                           ('age=abc', 'Age must be a number'),
                           ('sex=other', 'sex must be one of')):
      status, answer, _ = _request(address, f'/api/predict?{query}', jpeg)
      assert status == 400 and message in json.loads(answer)['error']
    assert _healthy(address)
  finally:
    server.shutdown()
    server.server_close()


def test_metadata_csv_reaches_the_model_in_predict_and_serve(
    mixed_version, version, tmp_path, capsys):
  """predict / serve --metadata: each image's row (HAM10000 or ISIC 2019
  columns) is what the model gets, as the Evaluator's serving_default path
  would; an image without a row gets missing values and is counted."""
  from pipeline import metadata_csv  # pylint: disable=g-import-not-at-top
  images = version[1][:3]
  stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
  folder = tmp_path / 'images'
  folder.mkdir()
  for path in images:
    with open(path, 'rb') as src, open(folder / os.path.basename(path),
                                       'wb') as dst:
      dst.write(src.read())
  ham = tmp_path / 'ham.csv'
  ham.write_text('lesion_id,image_id,dx,age,sex,localization\n'
                 f'L1,{stems[0]},nv,63,male,back\n'
                 f'L2,{stems[1]},mel,,female,face\n')
  isic = tmp_path / 'isic.csv'
  isic.write_text('image,age_approx,anatom_site_general,sex\n'
                  f'{stems[0]},63,back,male\n'
                  f'{stems[1]},,face,female\n')
  with_rows = predict.predict(mixed_version, images,
                              metadata=metadata_csv.read(str(ham)))
  assert with_rows.without_metadata == [stems[2]]
  model = predict.PushedModel(mixed_version)
  pixels = np.stack([model.pixels(open(p, 'rb').read()) for p in images])
  expected = model.probabilities(pixels, [
      {'age': 63.0, 'sex': 'male', 'localization': 'back'},
      {'age': None, 'sex': 'female', 'localization': 'face'}, {}])
  np.testing.assert_allclose(with_rows.probabilities, expected, atol=1e-6)
  # Without the CSV every image is fed as missing: other numbers.
  without = predict.predict(mixed_version, images)
  assert without.without_metadata == stems
  assert np.abs(without.probabilities[:2]
                - with_rows.probabilities[:2]).max() > 1e-4
  np.testing.assert_allclose(without.probabilities[2],
                             with_rows.probabilities[2], atol=1e-6)
  # The ISIC 2019 columns give the same answers; the CLI counts the rows.
  out = str(tmp_path / 'preds.csv')
  assert cli.main(['predict', '--model', mixed_version, '--images',
                   str(folder), '--out', out, '--metadata', str(isic)]) == 0
  printed = capsys.readouterr().out
  assert (f'from {isic} (isic2019 columns) for 2 of 3 images; 1 without a '
          f'row, fed as missing: {stems[2]}.') in printed
  with open(out) as f:
    rows = {line.split(',')[0]: [float(x) for x in line.split(',')[1:]]
            for line in f.read().splitlines()[1:]}
  for stem, probabilities in zip(stems, with_rows.probabilities):
    np.testing.assert_allclose(rows[stem], probabilities, atol=1e-6)
  # A malformed CSV is refused with its line; an image-only model says it
  # does not use the metadata.
  bad = tmp_path / 'bad.csv'
  bad.write_text('image_id,age,sex,localization\nA,old,male,back\n')
  assert cli.main(['predict', '--model', mixed_version, '--images',
                   str(folder), '--out', out, '--metadata', str(bad)]) == 1
  assert "line 2: age 'old' is not a number" in capsys.readouterr().err
  assert cli.main(['predict', '--model', version[0], '--images', str(folder),
                   '--out', out, '--metadata', str(ham)]) == 0
  assert 'not used (this model reads the image only)' in (
      capsys.readouterr().out)
  # serve --metadata: an upload named like a row gets the row, unless the
  # form gives values.
  app = serve.TryIt(model, metadata_table=metadata_csv.read(str(ham)))
  jpeg = open(images[0], 'rb').read()
  from_row = app.analyse(jpeg, os.path.basename(images[0]))
  assert from_row.metadata == {'age': 63.0, 'sex': 'male',
                               'localization': 'back'}
  assert [from_row.probabilities[k] for k in configs.LABELS] == (
      pytest.approx(list(expected[0]), abs=1e-6))
  from_form = app.analyse(jpeg, os.path.basename(images[0]),
                          {'sex': 'female'})
  assert from_form.metadata == {'age': None, 'sex': 'female',
                                'localization': 'unknown'}


# --------------------------------------------------------------------------
# The whole thing as a user meets it: `skinlesion serve` in its own process,
# driven by headless Chromium.


@pytest.fixture()
def cli_server(version):
  """`skinlesion serve --port 0` as a subprocess: (process, URL)."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'pipeline.cli', 'serve', '--model', version[0],
       '--port', '0', '--max-upload-mb', '0.25'],
      cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  lines, deadline, found = [], time.time() + 240, None
  while time.time() < deadline and found is None:
    line = process.stdout.readline()
    if not line:
      break
    lines.append(line)
    found = re.search(r'at (http://127\.0\.0\.1:\d+/)', line)
  if found is None:
    process.kill()
    pytest.fail('skinlesion serve did not start:\n' + ''.join(lines[-40:]))
  # Keep draining its log so the pipe never fills.
  threading.Thread(target=lambda: [None for _ in process.stdout],
                   daemon=True).start()
  yield process, found.group(1)
  process.terminate()
  process.wait(timeout=30)


def test_page_in_headless_chromium(cli_server, version, tmp_path, capsys):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support import expected_conditions  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  process, address = cli_server
  version_dir, images = version
  image = images[0]
  # `skinlesion predict` on the same file.
  folder = tmp_path / 'one'
  folder.mkdir()
  (folder / os.path.basename(image)).write_bytes(open(image, 'rb').read())
  csv_path = tmp_path / 'predictions.csv'
  assert cli.main(['predict', '--model', version_dir, '--images', str(folder),
                   '--out', str(csv_path)]) == 0
  header, row = [line.split(',') for line in
                 csv_path.read_text().strip().splitlines()]
  from_csv = {label: float(v) for label, v in zip(header[1:], row[1:])}
  expected_top = sorted(from_csv, key=lambda k: -from_csv[k])[:3]
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(_truncated(images))

  with headless_chromium(offline=False, window=(1280, 1100)) as driver:
    wait = WebDriverWait(driver, 120)
    driver.get(address)
    assert driver.find_element(By.ID, 'disclaimer').is_displayed()
    assert 'not a diagnosis' in driver.find_element(By.ID, 'disclaimer').text
    driver.find_element(By.ID, 'image').send_keys(image)
    driver.find_element(By.ID, 'submit').click()
    wait.until(expected_conditions.presence_of_element_located(
        (By.ID, 'top3')))
    rows = driver.find_elements(By.CSS_SELECTOR, '#top3 tr.top')
    shown = [(r.get_attribute('data-label'),
              float(r.get_attribute('data-probability'))) for r in rows]
    assert [label for label, _ in shown] == expected_top
    for label, probability in shown:
      assert abs(probability - from_csv[label]) < 2e-7, (label, probability)
      row_text = next(r.text for r in rows
                      if r.get_attribute('data-label') == label)
      assert f'{100 * from_csv[label]:.1f}%' in row_text
    # Both images loaded; the overlay is the SavedModel's own Grad-CAM of
    # this image over the displayed image.
    for element_id in ('uploaded', 'gradcam'):
      assert driver.execute_script(
          'const i = document.getElementById(arguments[0]);'
          'return i.complete && i.naturalWidth > 0', element_id), element_id
    overlay = serve.decode_data_uri_png(
        driver.find_element(By.ID, 'gradcam').get_attribute('src'))
    jpeg = open(image, 'rb').read()
    loaded = tf.saved_model.load(version_dir)
    pixels = preprocessing.decode_and_resize(tf.constant(jpeg),
                                             predict.PushedModel(
                                                 version_dir).image_size)
    heat = loaded.signatures[explain.GRADCAM_SIGNATURE](
        images=preprocessing.to_model_input(pixels[None]))[
            explain.HEATMAP_KEY].numpy()[0]
    expected = np.round(explain.overlay(serve.display_image(jpeg), heat)
                        * 255).astype(int)
    assert overlay.shape == expected.shape
    assert np.abs(overlay.astype(int) - expected).max() <= 1
    assert expected_top[0] in driver.find_element(
        By.ID, 'gradcam-note').text or configs.LABEL_DISPLAY_NAMES[
            expected_top[0]] in driver.find_element(By.ID, 'gradcam-note').text
    save_full_page_screenshot(driver, tmp_path / 'serve_result.png')

    # A corrupt file: a message on the page, and the server still answers.
    driver.find_element(By.ID, 'image').send_keys(str(corrupt))
    driver.find_element(By.ID, 'submit').click()
    wait.until(expected_conditions.presence_of_element_located(
        (By.ID, 'error')))
    message = driver.find_element(By.ID, 'error').text
    assert 'corrupt.jpg' in message and 'not a readable' in message, message
    assert not driver.find_elements(By.ID, 'top3')
    save_full_page_screenshot(driver, tmp_path / 'serve_corrupt.png')
    assert process.poll() is None, 'the server stopped after a bad upload'
    driver.get(address)
    assert driver.find_element(By.ID, 'upload-form').is_displayed()
    # The refused upload's 400 is logged by the browser; nothing else.
    severe = [e for e in severe_console_entries(driver)
              if 'status of 400 (Bad Request)' not in e['message']]
    assert not severe, severe
  with capsys.disabled():
    print(f'\nserve screenshots: {tmp_path / "serve_result.png"}, '
          f'{tmp_path / "serve_corrupt.png"}')


def test_calibration_text_says_when_the_fit_was_not_applied():
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  reason = 'not applied: T = 1.462 raised the ECE on the fitting data'
  text = serve.calibration_text(SimpleNamespace(manifest={'blessing': {
      'calibration': {'method': 'temperature', 'applied': False,
                      'temperature': 1.0, 'reason': reason},
      'test_metrics': {'expected_calibration_error': 0.0816}}}))
  assert "the network's softmax" in text and reason in text
  assert 'test-split expected calibration error is 0.082' in text
  text = serve.calibration_text(SimpleNamespace(manifest={}))
  assert 'No calibration was fitted' in text
