"""The run report's charts: matplotlib figures as base64 PNG data URIs."""

import base64
import io
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from models import explain  # pylint: disable=wrong-import-position


def _png(fig) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  plt.close(fig)
  return 'data:image/png;base64,' + base64.b64encode(
      buffer.getvalue()).decode('ascii')


def png_file_uri(path: str) -> str:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return 'data:image/png;base64,' + base64.b64encode(f.read()).decode(
        'ascii')


def training_curves(history: Dict[str, List[float]]) -> List[Dict[str, str]]:
  """One chart for the loss and one for the accuracy metrics, per epoch."""
  charts = []
  groups = (('Loss', [k for k in history if k.endswith('loss')]),
            ('Accuracy', [k for k in history if 'accuracy' in k]))
  for title, keys in groups:
    if not keys:
      continue
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key in sorted(keys):
      # Metrics first seen in a later training phase are null before it.
      values = [np.nan if v is None else v for v in history[key]]
      ax.plot(range(1, len(values) + 1), values, marker='o', markersize=3,
              label=key, linestyle='--' if key.startswith('val_') else '-')
    ax.set_xlabel('epoch')
    ax.set_title(f'{title} per epoch (val_ = eval split)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    charts.append({'title': f'{title} per epoch', 'src': _png(fig)})
  return charts


def confusion_chart(matrix: np.ndarray, labels: Sequence[str]) -> str:
  """Row-normalized (recall) colours, counts written in the cells."""
  rows = matrix.sum(1, keepdims=True)
  normalized = np.divide(matrix, rows, out=np.zeros_like(matrix, float),
                         where=rows > 0)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels),
                                  0.8 + 0.6 * len(labels)))
  image = ax.imshow(normalized, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=40, ha='right')
  ax.set_yticks(range(len(labels)))
  ax.set_yticklabels(labels)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(j, i, f'{int(matrix[i, j])}', ha='center', va='center',
              fontsize=8, color='white' if normalized[i, j] > 0.5 else 'black')
  fig.colorbar(image, ax=ax, label='fraction of the true class')
  ax.set_title('Confusion matrix (rows normalized)')
  fig.tight_layout()
  return _png(fig)


def roc_chart(curves: Dict[str, Tuple[np.ndarray, np.ndarray, Optional[float]]],
              melanoma: Optional[str] = None) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for name, (fpr, tpr, auc) in curves.items():
    label = name if auc is None else f'{name} (AUC {auc:.3f})'
    ax.plot(fpr, tpr, label=label,
            linewidth=2.5 if name == melanoma else 1.2)
  ax.plot([0, 1], [0, 1], color='grey', linestyle=':', linewidth=1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate (recall)')
  ax.set_title('ROC, one class vs the rest')
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  return _png(fig)


def reliability_chart(confidence: np.ndarray, accuracy: np.ndarray,
                      counts: np.ndarray, title: str) -> str:
  fig, ax = plt.subplots(figsize=(5, 4.2))
  keep = counts > 0
  width = 1.0 / max(len(counts), 1)
  centers = (np.arange(len(counts)) + 0.5) * width
  ax.bar(centers[keep], accuracy[keep], width=width * 0.9, alpha=0.7,
         label='observed')
  ax.plot(confidence[keep], accuracy[keep], 'o', color='black', markersize=3,
          label='bin mean confidence')
  ax.plot([0, 1], [0, 1], color='grey', linestyle=':', label='perfect')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('predicted probability')
  ax.set_ylabel('observed frequency')
  ax.set_title(title)
  ax.legend(fontsize=8, loc='upper left')
  fig.tight_layout()
  return _png(fig)


def gradcam_grid(images: np.ndarray, heatmaps: np.ndarray,
                 cells: Dict[int, Dict[str, List[int]]],
                 positions: Dict[int, int], labels: Sequence[str],
                 probabilities: np.ndarray, per_cell: int) -> str:
  """Rows: true class; columns: correct examples, then wrong ones."""
  columns = 2 * per_cell
  rows = [c for c in cells if cells[c]['correct'] or cells[c]['wrong']]
  fig, axes = plt.subplots(len(rows), columns,
                           figsize=(max(5.0, 1.8 * columns), 1.9 * len(rows)),
                           squeeze=False)
  for r, c in enumerate(rows):
    picks = ([('correct', i) for i in cells[c]['correct']]
             + [None] * (per_cell - len(cells[c]['correct']))
             + [('wrong', i) for i in cells[c]['wrong']]
             + [None] * (per_cell - len(cells[c]['wrong'])))
    for k, pick in enumerate(picks):
      ax = axes[r][k]
      ax.set_xticks([])
      ax.set_yticks([])
      if k == 0:
        ax.set_ylabel(f'true {labels[c]}', fontsize=9)
      if pick is None:
        ax.text(0.5, 0.5, 'none', ha='center', va='center', fontsize=8,
                color='grey', transform=ax.transAxes)
        continue
      kind, index = pick
      j = positions[index]
      image = images[j]
      ax.imshow(explain.overlay(image, heatmaps[j]))
      predicted = int(probabilities[index].argmax())
      ax.set_title(f'{kind}: {labels[predicted]} '
                   f'{probabilities[index, predicted]:.2f}', fontsize=8,
                   color='darkgreen' if kind == 'correct' else 'darkred')
  fig.suptitle('Grad-CAM of the predicted class (red = most evidence)',
               fontsize=10)
  fig.tight_layout()
  return _png(fig)
