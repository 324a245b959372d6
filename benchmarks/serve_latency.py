"""`skinlesion serve` latency, side by side with `skinlesion predict`.

For one pushed version and a folder of JPEGs, measures in the same session:

  * serve start-up: `skinlesion serve --port 0` launched as a process until
    it prints its URL (Python + TensorFlow import, manifest sha256 check,
    model load), for the SavedModel and for --tflite;
  * per-image latency of a warm server: POST / (the whole page: model,
    Grad-CAM, overlay PNG, HTML) and POST /api/predict (JSON), median and
    95th percentile over the images, SavedModel (with Grad-CAM) and float16
    .tflite (no Grad-CAM);
  * the alternative without a server: one `skinlesion predict` process per
    image (what a reviewer would run for each photo), median wall time.

  .venv/bin/python benchmarks/serve_latency.py \
      --model tfx_home/serving_model/skin-lesion-tfx --images DIR [--n 30] \
      [--out benchmarks/results/serve_latency.json]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(model, tflite):
  command = [sys.executable, '-m', 'pipeline.cli', 'serve', '--model', model,
             '--port', '0'] + (['--tflite'] if tflite else [])
  began = time.perf_counter()
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  for line in process.stdout:
    found = re.search(r'at (http://127\.0\.0\.1:\d+/)', line)
    if found:
      return process, found.group(1), time.perf_counter() - began
  raise RuntimeError('serve did not start')


def form(data):
  boundary = 'benchBoundary'
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
          'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode() + \
      data + f'\r\n--{boundary}--\r\n'.encode()
  return body, {'Content-Type': f'multipart/form-data; boundary={boundary}'}


def timed_post(url, body, headers):
  request = urllib.request.Request(url, data=body, headers=headers)
  began = time.perf_counter()
  with urllib.request.urlopen(request, timeout=300) as response:
    response.read()
    assert response.status == 200
  return time.perf_counter() - began


def stats(seconds):
  ms = np.asarray(seconds) * 1000
  return {'median_ms': float(np.median(ms)),
          'p95_ms': float(np.percentile(ms, 95)), 'n': len(ms)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', required=True)
  parser.add_argument('--images', required=True)
  parser.add_argument('--n', type=int, default=30)
  parser.add_argument('--predict-n', type=int, default=5)
  parser.add_argument('--out')
  args = parser.parse_args()
  images = sorted(os.path.join(args.images, f) for f in
                  os.listdir(args.images) if f.lower().endswith('.jpg'))
  images = images[:args.n]
  result = {'images': len(images), 'cores': os.cpu_count()}
  for name, tflite in (('saved_model', False), ('tflite_float16', True)):
    process, url, startup = start(args.model, tflite)
    try:
      data = [open(p, 'rb').read() for p in images]
      timed_post(url, *form(data[0]))  # Warm-up (first trace).
      page = [timed_post(url, *form(d)) for d in data]
      api = [timed_post(url + 'api/predict', d, {}) for d in data]
    finally:
      process.terminate()
      process.wait(timeout=30)
    result[name] = {'startup_s': startup, 'page': stats(page),
                    'api': stats(api)}
    print(name, json.dumps(result[name]), flush=True)
  walls = []
  for path in images[:args.predict_n]:
    folder = tempfile.mkdtemp()
    try:
      shutil.copy(path, folder)
      began = time.perf_counter()
      subprocess.run([sys.executable, '-m', 'pipeline.cli', 'predict',
                      '--model', args.model, '--images', folder, '--out',
                      os.path.join(folder, 'out.csv')], cwd=ROOT, check=True,
                     capture_output=True,
                     env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
      walls.append(time.perf_counter() - began)
    finally:
      shutil.rmtree(folder)
  result['predict_process_per_image'] = stats(walls)
  result['ratio_predict_process_to_page'] = (
      result['predict_process_per_image']['median_ms']
      / result['saved_model']['page']['median_ms'])
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
