"""`skinlesion serve`: a local try-it page for a pushed model.

A clinician or reviewer uploads one dermoscopic JPEG or PNG and sees the
image, the model's top-3 classes with their (temperature-scaled) calibrated
probabilities, a Grad-CAM overlay of the top class (SavedModel only: a
.tflite has no gradients), the model's version with the gates it passed
(``manifest.json``'s ``blessing`` and ``metrics``), and a plain statement
that this is decision support, not a diagnosis.  A model that also reads
patient metadata (``mixed_input``) gets age, sex and body-site fields
(empty or 'unknown': missing, as ingestion writes a missing value); it has
no Grad-CAM (several inputs) and the page says so.

Why a small WSGI app on Werkzeug rather than Streamlit (R2's choice):
  * no new dependency: Werkzeug is already in the lock (TensorBoard pulls
    it in); Streamlit pulls tornado, altair, pyarrow, protobuf and watchdog
    constraints into a lock file already pinned around TFX 1.16 / kfp 2.5 /
    protobuf 3.20, for one page;
  * Werkzeug parses the requests and the multipart upload (in memory, never
    on disk), enforces the upload limit (``Request.max_content_length``)
    and routes; the app (``WsgiApp``) is tested with ``werkzeug.test.Client``
    without a server;
  * the page is plain server-rendered HTML with a file form: it works
    without JavaScript, over no network but localhost, and a headless
    browser test drives it deterministically (Streamlit's page is a
    websocket-driven React app that reruns the script on every widget
    event);
  * the model is loaded once, verified against its manifest first, through
    the same ``pipeline.predict.PushedModel`` as ``skinlesion predict``, so
    the page and the CSV agree to the last digit on the same file;
  * it serves many reviewers at once (Werkzeug's threaded server, one thread
    per request; inference serialized): measured on 2 cores, 9 s to start,
    then 47 ms per upload with Grad-CAM (BENCHMARKS.md,
    benchmarks/serve_latency.py, measured on the earlier http.server
    version).

Endpoints: ``GET /`` the page; ``POST /`` (multipart form, field ``image``,
and ``age`` / ``sex`` / ``localization`` for a metadata model) the page with
the result or a clear error message; ``POST /api/predict`` (the raw image
bytes as the body, metadata as query parameters) the same result as JSON;
``GET /healthz``; any other path 404, another method 405.
Bad uploads (no file, not an image, corrupt or truncated, unsupported
format, too many pixels, larger than ``--max-upload-mb``) answer 4xx with a
message on the page; any other failure answers 500 with a message.  The
server keeps running either way.  It listens on 127.0.0.1 unless told
otherwise: an uploaded photo of a patient's skin is health data.
"""

import base64
import dataclasses
import http
import io
import json
import logging
import os
import re
import socket
import threading
import traceback
from typing import Any, Dict, List, Optional, Tuple

import jinja2
import numpy as np
from PIL import Image
import tensorflow as tf
from werkzeug import exceptions
from werkzeug import routing
from werkzeug import serving
from werkzeug import wrappers

from components.image_example_gen import images
from components import interval_gate
from components import intervals as intervals_lib
from components import run_report
from models import explain
from models import features
from pipeline import configs
from pipeline import metadata_csv
from pipeline import predict

DEFAULT_HOST = configs.SERVE_HOST
DEFAULT_PORT = configs.SERVE_PORT
DEFAULT_MAX_UPLOAD_MB = configs.SERVE_MAX_UPLOAD_MB
TOP_K = 3
# The uploaded image and its overlay are shown at most this many pixels on
# their longer side.
DISPLAY_MAX_SIDE = 448
DISCLAIMER = (
    'Decision support, not a diagnosis. This model was trained and tested '
    'on one archive of dermoscopic images; its probabilities are calibrated '
    'on that archive only. It can be wrong on any image, and it has not '
    'been validated for clinical use: a clinician examines the patient and '
    'decides.')

_log = logging.getLogger('skinlesion.serve')
# The form's choices for a model that reads patient metadata (mixed_input):
# the vocabularies it was trained with; anything else is its unknown bucket.
METADATA_CHOICES = {features.SEX_KEY: configs.SEX_VOCABULARY,
                    features.LOCALIZATION_KEY: configs.LOCALIZATION_VOCABULARY}


class UploadError(Exception):
  """A bad upload: ``status`` and a message for the person who sent it."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass
class Analysis:
  """One image's answer."""
  filename: str
  top: List[Tuple[str, str, float]]   # (label, display name, probability)
  probabilities: Dict[str, float]
  image_png: str                      # data URI of the image as uploaded
  overlay_png: Optional[str]          # data URI of the Grad-CAM overlay
  overlay_note: str                   # what the overlay shows, or why none
  converted: bool                     # the upload was re-encoded (PNG ...)
  metadata: Dict[str, Any]            # what a metadata model was given

  def as_json(self, model: predict.PushedModel) -> Dict[str, Any]:
    return {
        'filename': self.filename,
        'model_version': model.manifest.get('model_version'),
        'model_file': model.file,
        'top': [{'label': label, 'name': name, 'probability': p}
                for label, name, p in self.top],
        'probabilities': self.probabilities,
        'gradcam': self.overlay_png is not None,
        'gradcam_note': self.overlay_note,
        'metadata': self.metadata,
        'disclaimer': DISCLAIMER,
    }


def _png_data_uri(image: np.ndarray) -> str:
  """float [H, W, 3] in [0, 1] (or uint8) -> a PNG data URI (lossless)."""
  if image.dtype != np.uint8:
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return 'data:image/png;base64,' + base64.b64encode(
      buffer.getvalue()).decode('ascii')


def display_image(jpeg: bytes) -> np.ndarray:
  """float32 [H, W, 3] in [0, 1]: the whole image, longer side at most
  DISPLAY_MAX_SIDE (bilinear, aspect kept), as shown on the page."""
  image = tf.io.decode_jpeg(jpeg, channels=3)
  height, width = int(image.shape[0]), int(image.shape[1])
  factor = min(1.0, DISPLAY_MAX_SIDE / max(height, width))
  if factor < 1.0:
    image = tf.image.resize(
        image, (max(1, round(height * factor)), max(1, round(width * factor))),
        method='bilinear')
  return (tf.cast(image, tf.float32) / 255.0).numpy()


def decode_data_uri_png(uri: str) -> np.ndarray:
  """uint8 [H, W, 3] of a ``data:image/png;base64,`` URI (tests, clients)."""
  prefix = 'data:image/png;base64,'
  if not uri.startswith(prefix):
    raise ValueError(f'not a PNG data URI: {uri[:40]!r}')
  with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))) as image:
    return np.asarray(image.convert('RGB'))


class TryIt:
  """The page's logic, independent of HTTP: analyse one upload."""

  def __init__(self, model: predict.PushedModel,
               max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
               max_pixels: int = configs.MAX_IMAGE_PIXELS,
               metadata_table: Optional[metadata_csv.MetadataTable] = None):
    self.model = model
    # serve --metadata CSV: an upload whose file name (without extension)
    # has a row gets that row's metadata unless the form gives some.
    self.metadata_table = metadata_table
    self.max_upload_bytes = int(max_upload_bytes)
    self._check = images.ImageCheck(max_pixels)
    # TFLite interpreters are not thread safe; TF is, but one image at a
    # time keeps the 2-core machines responsive.
    self._lock = threading.Lock()

  def check_size(self, size: Optional[int]) -> None:
    """UploadError 413 when ``size`` bytes (None: unknown, but over a
    limit) is more than this page takes."""
    if size is None or size > self.max_upload_bytes:
      got = (f'The upload is {size / 2**20:.1f} MB' if size is not None
             else 'The upload is too large')
      raise UploadError(
          http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
          f'{got}; this page accepts images up to '
          f'{self.max_upload_bytes / 2**20:.1f} MB. Resize or re-export the '
          'photo and try again.')

  def metadata(self, fields: Dict[str, str]) -> Dict[str, Any]:
    """The model's metadata inputs from form / query fields (empty or
    'unknown': missing, as ingestion writes it); UploadError if invalid.
    An image-only model takes none: {}."""
    out: Dict[str, Any] = {}
    for key in self.model.metadata_keys:
      value = (fields.get(key) or '').strip()
      if key == features.AGE_KEY:
        if not value:
          out[key] = None
          continue
        try:
          age = float(value)
        except ValueError:
          age = float('nan')
        if not 0 <= age <= 120:
          raise UploadError(http.HTTPStatus.BAD_REQUEST,
                            f'Age must be a number of years from 0 to 120 '
                            f'(or empty when unknown), not {value!r}.')
        out[key] = age
      else:
        choices = METADATA_CHOICES[key]
        value = value.lower() or features.UNKNOWN
        if value != features.UNKNOWN and value not in choices:
          raise UploadError(http.HTTPStatus.BAD_REQUEST,
                            f'{key} must be one of {", ".join(choices)} or '
                            f'unknown, not {value!r}.')
        out[key] = value
    return out

  def analyse(self, data: bytes, filename: str = '',
              fields: Optional[Dict[str, str]] = None) -> Analysis:
    """The top classes and the explanation of one uploaded file's bytes
    (``fields``: age / sex / localization for a model that reads them)."""
    self.check_size(len(data))
    fields = dict(fields or {})
    stem = os.path.splitext(os.path.basename(filename))[0]
    given = any((fields.get(k) or '').strip().lower()
                not in ('', features.UNKNOWN) for k in self.model.metadata_keys)
    if (self.metadata_table is not None and not given
        and stem in self.metadata_table.rows):
      # Normalized as ingestion does (pipeline/metadata_csv.py): a site
      # outside the vocabulary goes to the model's unknown bucket, as in
      # training.
      row = self.metadata_table.rows[stem]
      metadata = {k: row[k] for k in self.model.metadata_keys}
    else:
      metadata = self.metadata(fields)
    ok, problem = self._check.check_bytes(data)
    if problem:
      raise UploadError(http.HTTPStatus.BAD_REQUEST,
                        upload_problem_message(filename, *problem))
    _, jpeg, converted = ok
    pixels = self.model.pixels(jpeg)[None]
    with self._lock:
      # The probabilities come from serving_images, as `predict`'s do (the
      # page must show the CSV's numbers); serving_gradcam runs the model
      # once more for the heatmap (measured: 47 ms per photo in all).
      probabilities = self.model.probabilities(pixels, [metadata])[0]
      heatmaps = self.model.gradcam(pixels)
    order = np.argsort(-probabilities, kind='stable')[:TOP_K]
    labels = self.model.labels
    top = [(labels[i], configs.LABEL_DISPLAY_NAMES.get(labels[i], labels[i]),
            float(probabilities[i])) for i in order]
    image = display_image(jpeg)
    if heatmaps is not None:
      overlay = _png_data_uri(explain.overlay(image, heatmaps[0]))
      note = (f'Grad-CAM of the top class ({top[0][1]}): red marks the '
              'regions whose features raised its probability most, blue '
              'none. It shows where the model looked, not a lesion border, '
              'and not proof that the features are clinically meaningful.')
    else:
      overlay = None
      note = ('No Grad-CAM overlay: '
              + ('a .tflite model has no gradients (serve the SavedModel, '
                 'without --tflite, to see one).'
                 if self.model.tflite_format else
                 f'the SavedModel has no {explain.GRADCAM_SIGNATURE} '
                 'signature (a model with several inputs, such as '
                 'mixed_input, cannot be explained image-only).'))
    return Analysis(
        filename=filename, top=top,
        probabilities={label: float(p) for label, p in
                       zip(labels, probabilities)},
        image_png=_png_data_uri(image), overlay_png=overlay,
        overlay_note=note, converted=converted, metadata=metadata)


def upload_problem_message(filename: str, reason: str, detail: str) -> str:
  """Ingestion's quarantine reason, said to the person who uploaded."""
  name = f'"{filename}"' if filename else 'The upload'
  if reason == images.EMPTY:
    return f'{name} is empty (0 bytes). Choose a JPEG or PNG photo.'
  if reason == images.UNSUPPORTED:
    return (f'{name} is an image this page does not take ({detail}). '
            'Upload a JPEG or PNG.')
  if reason == images.TOO_MANY_PIXELS:
    return f'{name} has too many pixels ({detail}). Downscale it first.'
  detail = re.sub(r' ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>', '', detail)
  return (f'{name} is not a readable JPEG or PNG image: it may be '
          f'truncated or corrupt, or another kind of file ({detail}).')


# --------------------------------------------------------------------------
# The page.

_PAGE = jinja2.Environment(autoescape=True).from_string('''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Try the skin-lesion model {{ m.version }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; margin-bottom: .2em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
#disclaimer { background: #fff4d6; border: 2px solid #d9a400; padding: .8em 1em; font-weight: 600; }
#error { background: #fde2e1; border: 2px solid #c0392b; padding: .8em 1em; }
.row { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85em; color: #555; max-width: 448px; }
img { border: 1px solid #ccc; image-rendering: auto; }
table { border-collapse: collapse; margin: .4em 0; } td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
td.l, th.l { text-align: left; } .muted { color: #666; font-size: .9em; }
.bar { background: #3b7dd8; height: .8em; display: inline-block; vertical-align: middle; }
.fail { color: #b00; font-weight: 600; } .pass { color: #070; }
</style></head><body>
<h1>Skin-lesion classifier: try it</h1>
<p class="muted">Model <b id="model-version">{{ m.version }}</b> ({{ m.file }}), pushed {{ m.created }}; {{ m.labels|length }} classes.</p>
<p id="disclaimer">{{ disclaimer }}</p>

<section id="upload"><h2>Upload a dermoscopic photo</h2>
<form id="upload-form" method="post" action="/" enctype="multipart/form-data">
<input id="image" name="image" type="file" accept="image/jpeg,image/png,.jpg,.jpeg,.png" required>
{% if 'age' in m.metadata_keys %}<label>Age <input id="age" name="age" type="number" min="0" max="120" step="1" placeholder="unknown" style="width: 5em"></label>{% endif %}
{% for key, choices in m.metadata_choices %}<label>{{ key }} <select id="{{ key }}" name="{{ key }}"><option value="unknown">unknown</option>
{% for c in choices %}<option value="{{ c }}">{{ c }}</option>{% endfor %}</select></label>{% endfor %}
<button id="submit" type="submit">Classify</button>
<span class="muted">JPEG or PNG, up to {{ max_mb }} MB. The image is analysed in memory on this computer and not stored.</span>
</form></section>

{% if error %}<p id="error" role="alert">{{ error }}</p>{% endif %}

{% if a %}<section id="result"><h2>Result for {{ a.filename or 'the upload' }}</h2>
{% if a.metadata %}<p id="metadata-used">With {% for k, v in a.metadata.items() %}{{ k }} {{ 'unknown' if v is none else v }}{{ ', ' if not loop.last }}{% endfor %} (this model reads them beside the image).</p>{% endif %}
<div class="row">
<figure><img id="uploaded" src="{{ a.image_png }}" alt="the uploaded image">
<figcaption>The uploaded image{% if a.converted %} (re-encoded as RGB JPEG, as the pipeline ingests it){% endif %}; the model sees it resized to {{ m.image_size }}&times;{{ m.image_size }} px.</figcaption></figure>
{% if a.overlay_png %}<figure><img id="gradcam" src="{{ a.overlay_png }}" alt="Grad-CAM overlay">
<figcaption id="gradcam-note">{{ a.overlay_note }}</figcaption></figure>
{% else %}<p id="gradcam-note" class="muted">{{ a.overlay_note }}</p>{% endif %}
<div><table id="top3"><tr><th class="l">rank</th><th class="l">class</th><th>probability</th><th class="l"></th></tr>
{% for label, name, p in a.top %}<tr class="top" data-label="{{ label }}" data-probability="{{ '%.9g'|format(p) }}">
<td class="l">{{ loop.index }}</td><td class="l">{{ name }} ({{ label }})</td><td>{{ '%.1f'|format(100 * p) }}%</td>
<td class="l"><span class="bar" style="width: {{ (150 * p)|round|int }}px"></span></td></tr>{% endfor %}
</table>
<p class="muted">How far to trust these numbers: see the calibration note under the model below.</p></div>
</div></section>{% endif %}

<section id="model"><h2>The model: version {{ m.version }}</h2>
<p>{{ m.blessing_text }}</p>
{% if m.gates %}<table id="gates"><tr><th class="l">gate</th><th class="l">bound</th><th>value</th><th class="l">verdict</th></tr>
{% for g in m.gates %}<tr><td class="l">{{ g.name }}</td><td class="l">{{ g.bound }}</td><td>{{ g.value }}</td>
<td class="l {{ 'pass' if g.passed else 'fail' }}">{{ 'passed' if g.passed else 'failed' }}</td></tr>{% endfor %}
</table>{% endif %}
{% if m.metrics %}<h3>Test-split metrics ({{ m.metrics_split }}, {{ m.examples }} images, lesion-disjoint)</h3>
<table id="metrics"><tr><th class="l">metric</th><th>value</th></tr>
{% for name, v in m.metrics %}<tr><td class="l">{{ name }}</td><td>{{ v }}</td></tr>{% endfor %}
</table>{% endif %}
{% if m.recall %}<h3>Recall per class (test split)</h3>
<table id="recall"><tr><th class="l">class</th><th>recall</th></tr>
{% for name, v in m.recall %}<tr><td class="l">{{ name }}</td><td>{{ v }}</td></tr>{% endfor %}
</table>{% endif %}
<p id="calibration">{{ calibration_text }}</p>
<p class="muted">From {{ m.manifest_path }} (every file checked against its sha256 at start-up).</p>
</section>
</body></html>
''')


def model_facts(model: predict.PushedModel) -> Dict[str, Any]:
  """What the page says about the model, from its manifest."""
  manifest = model.manifest
  blessing = manifest.get('blessing') or {}
  fmt = run_report.fmt
  gates = [{'name': g.get('metric'), 'bound': g.get('threshold'),
            'value': fmt(g.get('value')), 'passed': g.get('passed', True)}
           for g in blessing.get('gates') or []]
  for g in blessing.get('interval_gates') or []:
    if g.get('gate') == interval_gate.SUBGROUP_GATE:
      name = f'subgroup gate across {g.get("slice_family")}'
      value = g.get('note') or 'not measurable'
    else:
      name = 'regression gate vs the latest blessed model'
      value = (intervals_lib.text(g['difference']) if g.get('difference')
               else 'no baseline')
    gates.append({'name': name,
                  'bound': f'interval not wholly below -{fmt(g.get("bound"))}',
                  'value': value, 'passed': g.get('passed', True)})
  metrics = manifest.get('metrics') or {}
  saved = metrics.get('saved_model') or {}
  served = (metrics.get(model.tflite_format) if model.tflite_format
            else saved) or saved
  tests = dict(blessing.get('test_metrics') or {})
  for key in ('accuracy', 'balanced_accuracy'):
    if key in served:
      tests.setdefault(key, served[key])
  ranges = blessing.get('test_intervals') or {}
  shown = [(k, intervals_lib.text(ranges[k]) if isinstance(ranges.get(k), dict)
            else fmt(v)) for k, v in sorted(
      tests.items(), key=lambda kv: (kv[0] != 'balanced_accuracy', kv[0]))
           if k != 'example_count']
  recall = served.get('per_class_recall') or {}
  mel = configs.melanoma_class(model.labels)
  recall_rows = [(f'{configs.LABEL_DISPLAY_NAMES.get(k, k)} ({k})', fmt(v))
                 for k, v in sorted(recall.items(),
                                    key=lambda kv: (kv[0] != mel, kv[0]))]
  if manifest.get('blessing') is None:
    text = ('This version was pushed, so it passed every blessing gate, but '
            'its manifest predates the recorded gate values.')
  else:
    text = ('Pushed only because it passed every gate below on the '
            'lesion-disjoint test split'
            + (', and did not fall behind the previously blessed model.'
               if blessing.get('compared_with_baseline') else '.'))
  return {
      'version': manifest.get('model_version', '?'),
      'created': manifest.get('created_utc', '?'),
      'labels': model.labels, 'file': model.file,
      'image_size': model.image_size,
      'gates': gates, 'blessing_text': text,
      'metrics': shown, 'metrics_split': metrics.get('split', 'test'),
      'examples': served.get('examples', tests.get('example_count', '?')),
      'recall': recall_rows,
      'manifest_path': f'{model.version_dir}/manifest.json',
      'metadata_keys': model.metadata_keys,
      'metadata_choices': [(k, METADATA_CHOICES[k]) for k in
                           model.metadata_keys if k in METADATA_CHOICES],
  }


def calibration_text(model: predict.PushedModel) -> str:
  fit = (model.manifest.get('blessing') or {}).get('calibration') or {}
  ece = ((model.manifest.get('blessing') or {}).get('test_metrics') or {}
         ).get('expected_calibration_error')
  ece_text = (f' The test-split expected calibration error is {ece:.3f}.'
              if isinstance(ece, float) else '')
  if fit.get('method') == 'temperature' and fit.get('applied'):
    return (f'Probabilities are temperature scaled (T = '
            f'{fit["temperature"]:.3f}, fitted on the eval split) so that, '
            'on this archive, a 70% top class is right about 70% of the '
            f'time.{ece_text} They are not a risk for this patient.')
  tried = (f' Temperature scaling was tried on the eval split and '
           f'{fit["reason"]}.' if fit.get('reason') else
           ' No calibration was fitted for this version.')
  return ('Probabilities are the network\'s softmax.' + tried + ece_text
          + ' They are not a risk for this patient.')


def render_page(app: TryIt, analysis: Optional[Analysis] = None,
                error: Optional[str] = None) -> bytes:
  return _PAGE.render(
      m=model_facts(app.model), a=analysis, error=error,
      disclaimer=DISCLAIMER, calibration_text=calibration_text(app.model),
      max_mb=f'{app.max_upload_bytes / 2**20:g}').encode('utf-8')


# --------------------------------------------------------------------------
# HTTP: a WSGI application on Werkzeug.

_SECURITY_HEADERS = {
    # The page needs nothing from anywhere: no script at all, images only
    # as data: URIs, the form posts back to this server.
    'Content-Security-Policy': ("default-src 'none'; img-src data:; "
                                "style-src 'unsafe-inline'; "
                                "form-action 'self'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-store',
}
# A form's overhead (boundaries, part headers, metadata fields) is small: a
# body over the upload limit plus this is refused (413) before it is parsed;
# the image's own size is checked again after parsing.
FORM_OVERHEAD = 64 * 1024
# A non-file form field (age, sex, localization) over this is refused (413).
# Werkzeug applies it to each 64 KiB read of the body too: keep it above.
MAX_FIELD_BYTES = 256 * 1024

_ROUTES = routing.Map([
    routing.Rule('/', endpoint='page', methods=['GET']),
    routing.Rule('/', endpoint='form', methods=['POST']),
    routing.Rule('/api/predict', endpoint='api', methods=['POST']),
    routing.Rule('/healthz', endpoint='healthz', methods=['GET']),
])


class UploadRequest(wrappers.Request):
  """Parses uploads in memory: an uploaded photo never touches the disk
  (Werkzeug spools large files to a temporary file by default)."""
  max_form_memory_size = MAX_FIELD_BYTES

  def _get_file_stream(self, *unused_args, **unused_kwargs):
    return io.BytesIO()


def form_upload(request: wrappers.Request) -> Tuple[str, bytes, Dict[str, str]]:
  """(file name, bytes, other fields) of the page's form (field ``image``);
  UploadError when it is not a form or holds no file."""
  if request.mimetype != 'multipart/form-data':
    raise UploadError(http.HTTPStatus.BAD_REQUEST,
                      f'Expected a form upload (multipart/form-data), got '
                      f'{request.content_type or "no content type"}.')
  upload = request.files.get('image')
  data = upload.read() if upload is not None else b''
  if upload is None or (not upload.filename and not data):
    raise UploadError(http.HTTPStatus.BAD_REQUEST,
                      'No file was uploaded: choose a JPEG or PNG photo first.')
  return upload.filename or '', data, request.form.to_dict()


def api_upload(request: wrappers.Request) -> Tuple[str, bytes, Dict[str, str]]:
  """(file name, bytes, metadata) of ``POST /api/predict``: the raw image as
  the body, its name in ``X-Filename``, metadata as query parameters."""
  return (request.headers.get('X-Filename', ''), request.get_data(),
          {k: v[-1] for k, v in request.args.lists()})


def _json(status: int, value: Dict[str, Any]) -> wrappers.Response:
  return wrappers.Response(json.dumps(value), status,
                           content_type='application/json')


class WsgiApp:
  """The try-it page of one TryIt as a WSGI application: ``GET /``, ``POST
  /`` (form), ``POST /api/predict``, ``GET /healthz``.  Every response,
  errors included, carries the security headers."""

  def __init__(self, tryit: TryIt):
    self.tryit = tryit

  def __call__(self, environ, start_response):
    request = UploadRequest(environ)
    request.max_content_length = self.tryit.max_upload_bytes + FORM_OVERHEAD
    try:
      endpoint, _ = _ROUTES.bind_to_environ(environ).match()
      response = getattr(self, endpoint)(request)
    except exceptions.HTTPException as e:
      # 404 'not found', 405 'method not allowed' (with Allow), as plain text.
      response = (e.get_response(environ) if e.code < 400 else
                  wrappers.Response(f'{e.name.lower()}\n', e.code,
                                    headers=e.get_headers(environ),
                                    content_type='text/plain'))
    except Exception:  # pylint: disable=broad-except
      _log.error('Failed on a request:\n%s', traceback.format_exc())
      response = wrappers.Response('internal server error\n', 500,
                                   content_type='text/plain')
    response.headers.update(_SECURITY_HEADERS)
    # The standard reason phrase ('400 Bad Request'; Werkzeug's are upper case).
    code = response.status_code
    response.status = f'{code} {http.HTTPStatus(code).phrase}'
    return response(environ, start_response)

  def _page(self, status: int, analysis=None, error=None) -> wrappers.Response:
    return wrappers.Response(render_page(self.tryit, analysis, error), status,
                             content_type='text/html; charset=utf-8')

  def page(self, unused_request) -> wrappers.Response:
    return self._page(http.HTTPStatus.OK)

  def healthz(self, unused_request) -> wrappers.Response:
    return _json(http.HTTPStatus.OK, {
        'status': 'ok',
        'model_version': self.tryit.model.manifest.get('model_version'),
        'model_file': self.tryit.model.file})

  def form(self, request) -> wrappers.Response:
    return self._analyse(request, api=False)

  def api(self, request) -> wrappers.Response:
    return self._analyse(request, api=True)

  def _analyse(self, request, api: bool) -> wrappers.Response:
    app = self.tryit
    try:
      try:
        filename, data, fields = (api_upload if api else form_upload)(request)
      except exceptions.RequestEntityTooLarge:
        length = request.content_length
        app.check_size(length if length and length > request.max_content_length
                       else None)
        raise
      analysis = app.analyse(data, filename, fields)
    except UploadError as e:
      _log.info('Refused upload: %s', e.message)
      return (_json(e.status, {'error': e.message}) if api
              else self._page(e.status, error=e.message))
    except Exception as e:  # pylint: disable=broad-except
      _log.error('Failed on an upload:\n%s', traceback.format_exc())
      message = (f'The model could not analyse this image ({type(e).__name__}'
                 f': {e}). The server is still running; try another image.')
      return (_json(http.HTTPStatus.INTERNAL_SERVER_ERROR, {'error': message})
              if api else self._page(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                     error=message))
    if api:
      return _json(http.HTTPStatus.OK, analysis.as_json(app.model))
    return self._page(http.HTTPStatus.OK, analysis=analysis)


class _RequestHandler(serving.WSGIRequestHandler):
  """Werkzeug's dev-server handler, logging to skinlesion.serve (no ANSI
  colours) under this server's name."""
  server_version = 'skinlesion-serve'
  protocol_version = 'HTTP/1.1'

  def log_request(self, code='-', size='-') -> None:
    _log.info('%s "%s" %s %s', self.address_string(), self.requestline,
              getattr(code, 'value', code), size)

  def log(self, type, message, *args) -> None:  # pylint: disable=redefined-builtin
    (_log.error if type == 'error' else _log.info)(
        '%s %s', self.address_string(), message % args)


def make_server(app: TryIt, host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT) -> serving.BaseWSGIServer:
  """A bound, threaded server of the page (one thread per request; port 0:
  any free port, see ``server_address``).  OSError when it cannot bind: the
  socket is bound here, since Werkzeug would print and exit the process."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  with socket.create_server((host, port), family=family) as sock:
    return serving.make_server(host, port, WsgiApp(app), threaded=True,
                               request_handler=_RequestHandler,
                               fd=sock.fileno())


def url_of(server: serving.BaseWSGIServer) -> str:
  host, port = server.server_address[:2]
  return f'http://{f"[{host}]" if ":" in host else host}:{port}/'
