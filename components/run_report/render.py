"""The report's and model card's templates, rendered with jinja2."""

import jinja2

from components import intervals as intervals_lib
from components.run_report.metrics import fmt

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
nav{background:#fff;border-bottom:1px solid #dde;padding:8px 28px}
nav a{margin-right:14px;color:#2450a6;text-decoration:none;font-size:14px}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde;border-radius:6px;
margin:18px 0;padding:6px 20px 16px}
h2{border-bottom:1px solid #eee;padding-bottom:6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #dde;padding:4px 8px;text-align:right}
th{background:#eef1f6}
td.l,th.l{text-align:left}
tr.failed td,td.failed,th.failed{background:#fde2e1}
tr.gap td{font-weight:bold;background:#f7f7f2}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;
font-weight:bold;font-size:13px}
.ok{background:#d8f3dc;color:#1b5e20}.bad{background:#fde2e1;color:#b71c1c}
.muted{color:#666;font-size:13px}
img{max-width:100%;border:1px solid #eee;margin:6px 6px 6px 0}
figure{display:inline-block;margin:0 12px 12px 0;vertical-align:top}
figcaption{font-size:12px;color:#555}
pre{background:#f3f3f3;padding:8px;overflow-x:auto;font-size:12px}
"""


_REPORT_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run report: {{ r.pipeline_name }}</title>
<style>{{ css }}</style></head>
<body>
<header><h1>Run report: {{ r.pipeline_name }}</h1>
<div>Generated {{ r.generated }} &middot; model {{ r.model_uri }}</div>
<div style="margin-top:6px">
{% if r.blessing.blessed %}<span class="badge ok">BLESSED</span>
{% else %}<span class="badge bad">NOT BLESSED</span>{% endif %}
{% if r.pushed.pushed %}<span class="badge ok">PUSHED version {{ r.pushed.version }}</span>
{% else %}<span class="badge bad">NOT PUSHED</span>{% endif %}
</div></header>
<nav>{% for s in sections %}<a href="#{{ s }}">{{ titles[s] }}</a>{% endfor %}
<a href="{{ model_card }}">Model card</a></nav>
<main>

<section id="data"><h2>Data</h2>
{% set ing = r.data.ingestion %}
{% if ing %}
<p>Ingested {{ ing.examples }} of {{ ing.input_records }} inputs
(layout <b>{{ ing.layout }}</b>); quarantined {{ ing.quarantined }}
({{ '%.1f' % (100 * ing.quarantined_fraction) }}%).</p>
<table><tr><th class="l">class</th>{% for s in ing.examples_per_split %}<th>{{ s }}</th>{% endfor %}</tr>
{% for name in ing.labels %}<tr><td class="l">{{ name }}</td>
{% for s in ing.examples_per_split %}<td>{{ ing.examples_per_split_and_class[s][name] }}</td>{% endfor %}</tr>{% endfor %}
<tr class="gap"><td class="l">total</td>{% for s, n in ing.examples_per_split.items() %}<td>{{ n }}</td>{% endfor %}</tr>
<tr><td class="l">lesions</td>{% for s in ing.examples_per_split %}<td>{{ ing.lesions_per_split[s] }}</td>{% endfor %}</tr>
</table>
<h3>Quarantine</h3>
{% if ing.quarantined_by_reason %}<table><tr><th class="l">reason</th><th>images</th></tr>
{% for k, v in ing.quarantined_by_reason.items() %}<tr><td class="l">{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>No image was quarantined.</p>{% endif %}
<p class="muted">List: {{ ing.quarantine_file }}</p>
{% else %}<p>No ingestion report in the Examples artifact.</p>{% endif %}
{% if r.data.sources %}<h3>Acquisition sources</h3>
<table><tr><th class="l">source</th>{% for s in r.data.sources %}<th>{{ s }}</th>{% endfor %}</tr>
{% for v in r.data.source_values %}<tr><td class="l">{{ v }}</td>{% for s in r.data.sources %}<td>{{ '%d' % r.data.sources[s].get(v, 0) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}
<h3>Exploratory charts</h3>
{% for c in charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% else %}<p>No charts.</p>{% endfor %}
<h3>TFDV anomalies (ExampleValidator vs the curated schema)</h3>
{% if r.data.anomalies is none %}<p>No anomalies artifact.</p>
{% else %}<table><tr><th class="l">split</th><th class="l">feature</th><th class="l">severity</th><th class="l">description</th></tr>
{% for split, rows in r.data.anomalies.items() %}{% for a in rows %}
<tr class="failed"><td class="l">{{ split }}</td><td class="l">{{ a.feature }}</td><td class="l">{{ a.severity }}</td><td class="l">{{ a.description }}</td></tr>
{% else %}<tr><td class="l">{{ split }}</td><td class="l" colspan="3">no anomaly</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
</section>

<section id="training"><h2>Training</h2>
{% if r.training.history %}
<p>{{ r.training.epochs }} epochs; model <b>{{ r.training.config.get('model', '?') }}</b>,
image size {{ r.training.config.get('image_size', '?') }},
batch {{ r.training.config.get('batch_size', '?') }},
learning rate {{ r.training.config.get('learning_rate', '?') }}.</p>
{% set cal = r.training.get('calibration') %}
{% if cal and cal.get('method') == 'temperature' %}<p>Probability calibration: temperature scaling fitted on {{ cal.examples }} eval-split images,
T = {{ fmt(cal.fitted_temperature) }} (negative log-likelihood {{ fmt(cal.nll_before) }} &rarr; {{ fmt(cal.nll_after) }},
expected calibration error {{ fmt(cal.ece_before) }} &rarr; {{ fmt(cal.ece_after) }}):
{% if cal.applied %}applied in every exported signature; the evaluation below measures it on the test split.{% else %}{{ cal.reason }}; the exported probabilities are the network's softmax.{% endif %}</p>
{% else %}<p>Probability calibration: none (the network's softmax).</p>{% endif %}
{% for c in training_charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% endfor %}
<h3>Train examples and class weights</h3>
<table><tr><th class="l">class</th><th>train examples</th><th>class weight</th></tr>
{% for name, n in r.training.train_counts.items() %}<tr><td class="l">{{ name }}</td><td>{{ n }}</td>
<td>{{ fmt(r.training.class_weights.get(name)) if r.training.class_weights else 'off' }}</td></tr>{% endfor %}
</table>
{% else %}<p>No training history ({{ r.training.note }}).</p>{% endif %}
<h3>Model summary</h3>
{% if r.training.summary %}<pre>{{ r.training.summary }}</pre>{% else %}<p class="muted">No model summary was written by this Trainer.</p>{% endif %}
</section>

<section id="evaluation"><h2>Evaluation ({{ r.evaluation.split }} split)</h2>
<table><tr><th class="l">metric (TFMA, overall)</th><th>value</th></tr>
{% for name, v in r.evaluation.overall %}<tr><td class="l">{{ name }}</td><td>{{ fmt(v) }}</td></tr>{% endfor %}
</table>
<h3>Per class</h3>
<table><tr><th class="l">class</th>{% for c in r.evaluation.class_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in r.evaluation.class_rows %}<tr><td class="l">{{ row.label }}</td>{% for v in row['values'] %}<td>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% if r.evaluation.interval_rows %}<h3 id="intervals">95% intervals</h3>
<p class="muted">{{ r.evaluation.intervals_method }} (IntervalGate). Read a value with its interval: two models whose intervals overlap widely may not differ.</p>
<table class="intervals"><tr><th class="l">metric</th><th>value [95% interval]</th></tr>
{% for name, text in r.evaluation.interval_rows %}<tr><td class="l">{{ name }}</td><td>{{ text }}</td></tr>{% endfor %}
</table>
<table class="intervals"><tr><th class="l">class</th><th>recall [95% interval]</th><th>precision [95% interval]</th></tr>
{% for name, recall, precision in r.evaluation.class_interval_rows %}<tr><td class="l">{{ name }}</td><td>{{ recall }}</td><td>{{ precision }}</td></tr>{% endfor %}
</table>{% else %}<p class="muted">No intervals: no IntervalGate in this pipeline.</p>{% endif %}
{% for c in eval_charts %}<figure><img src="{{ c.src }}" alt="{{ c.title }}"><figcaption>{{ c.title }}</figcaption></figure>{% endfor %}
{% for note in r.evaluation.notes %}<p class="muted">{{ note }}</p>{% endfor %}
</section>

<section id="slices"><h2>Slices and fairness</h2>
<p class="muted">Each table: one slice family of the EvalConfig, with each group's balanced accuracy and its 95% interval;
spread = max - min over its groups (descriptive only: small groups vary by chance and groups differ in class mix).
The subgroup gate compares each group with the rest (Blessing decision). Red: a gate failed on this group.</p>
{% for t in slices %}
<h3>{{ t.family }}{% if t.failed %} <span class="badge bad">gate failed</span>{% endif %}</h3>
<table><tr><th class="l">group</th>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}{% if t.has_intervals %}<th>balanced accuracy [95% interval]</th>{% endif %}</tr>
{% for row in t.rows %}<tr{% if row.failed %} class="failed"{% endif %}><td class="l">{{ row.group }}</td>{% for v in row['values'] %}<td>{{ fmt(v) }}</td>{% endfor %}{% if t.has_intervals %}<td>{{ row.interval or '' }}</td>{% endif %}</tr>{% endfor %}
<tr class="gap"><td class="l">spread</td>{% for g in t.gaps %}<td>{{ fmt(g) }}</td>{% endfor %}{% if t.has_intervals %}<td></td>{% endif %}</tr>
</table>
{% for g in t.gates %}<p class="{{ 'muted' if g.passed else 'bad' }}">Subgroup gate: {{ 'passed' if g.passed else 'FAILED' }} ({{ g.note }})</p>{% endfor %}
{% else %}<p>The evaluation has no slices besides the overall one.</p>{% endfor %}
</section>

<section id="explanations"><h2>Explanations (Grad-CAM)</h2>
{% if gradcam %}<p>Images of the {{ r.evaluation.split }} split per true class: the most confident correct predictions, then the most
confident wrong ones, with the Grad-CAM heatmap of the predicted class, computed by the
SavedModel's own <code>serving_gradcam</code> signature.</p>
<figure><img src="{{ gradcam }}" alt="Grad-CAM grid"><figcaption>Grad-CAM grid</figcaption></figure>
{% else %}<p>No Grad-CAM: {{ r.explanations.note }}</p>{% endif %}
</section>

<section id="blessing"><h2>Blessing decision</h2>
<p>{% if r.blessing.blessed %}<span class="badge ok">BLESSED</span>{% else %}<span class="badge bad">NOT BLESSED</span>{% endif %}
{{ r.blessing.summary }}</p>
<table><tr><th class="l">gate</th><th class="l">slices</th><th class="l">threshold</th><th>value</th><th class="l">verdict</th></tr>
{% for g in r.blessing.gates %}<tr{% if not g.passed %} class="failed"{% endif %}><td class="l">{{ g.metric }}</td><td class="l">{{ g.slices }}</td>
<td class="l">{{ g.threshold }}</td><td>{{ fmt(g.value) }}</td><td class="l">{{ 'passed' if g.passed else 'FAILED' }}</td></tr>{% endfor %}
</table>
{% for f in r.blessing.failures %}<p class="bad">FAILED: {{ f }}</p>{% endfor %}
{% if r.blessing.gap %}<h3 id="interval-gates">Subgroup and regression gates (IntervalGate)</h3>
<p>{{ 'passed' if r.blessing.gap.blessed else 'FAILED' }}{% if r.blessing.gap.get('note') %} ({{ r.blessing.gap.get('note') }}){% endif %}.
Subgroup rule: a group fails only when the whole interval of (group - rest) lies below minus the bound, on the mean recall over the classes with enough images in both (intervals widened for the number of groups compared).
Regression rule: refused only when the whole interval of the paired difference (candidate - latest blessed model, same images) lies below minus the bound.</p>
<table><tr><th class="l">gate</th><th class="l">slice family</th><th class="l">group: value vs rest, difference [interval]</th><th class="l">not measured</th><th>bound</th><th class="l">verdict</th></tr>
{% for g in r.blessing.gap.gates %}<tr{% if not g.passed %} class="failed"{% endif %}><td class="l">{{ g.gate }}</td><td class="l">{{ g.get('slice_family') or g.metric }}</td>
<td class="l">{% if g.get('groups') %}{% for k, v in g.groups.items() %}{{ k }}: {{ fmt(v.value) }} vs {{ fmt(v.rest) }}, {{ itext(v.difference) }}{% if not v.passed %} FAILED{% endif %}{% if not loop.last %}<br>{% endif %}{% endfor %}{% elif g.get('difference') %}{{ itext(g.difference) }}{% else %}{{ g.note }}{% endif %}</td>
<td class="l">{% for k, v in (g.get('excluded') or {}).items() %}{{ k }} ({{ v.examples }}: {{ v.reason }}){% if not loop.last %}; {% endif %}{% endfor %}</td>
<td>-{{ fmt(g.bound) }}</td><td class="l">{{ 'passed' if g.passed else 'FAILED' }}</td></tr>{% endfor %}
</table>{% else %}<p class="muted">No IntervalGate in this pipeline.</p>{% endif %}
</section>

<section id="pushed"><h2>Pushed artifacts</h2>
{% if r.pushed.pushed %}
<p>Version <b>{{ r.pushed.version }}</b> at <code>{{ r.pushed.destination }}</code>;
manifest <code>{{ r.pushed.manifest }}</code>.</p>
<table><tr><th class="l">file</th><th>bytes</th><th class="l">sha256</th></tr>
{% for name, f in r.pushed.files.items() %}<tr><td class="l">{{ name }}</td><td>{{ f.bytes }}</td><td class="l"><code>{{ f.sha256 }}</code></td></tr>{% endfor %}
</table>
{% else %}<p><span class="badge bad">NOTHING PUSHED</span> {{ r.pushed.reason }}</p>{% endif %}
{% if r.pushed.mobile %}<h3>Mobile export (parity with the SavedModel)</h3>
<table><tr><th class="l">format</th><th class="l">verdict</th><th>top-1 agreement</th><th>balanced accuracy drop</th><th class="l">reasons</th></tr>
{% for fmt_name, v in r.pushed.mobile.items() %}<tr{% if not v.passed %} class="failed"{% endif %}><td class="l">{{ fmt_name }}</td><td class="l">{{ 'passed' if v.passed else 'FAILED' }}</td>
<td>{{ itext(v.top1_agreement_interval) if v.get('top1_agreement_interval') else fmt(v.top1_agreement) }}</td><td>{{ itext(v.balanced_accuracy_drop_interval) if v.get('balanced_accuracy_drop_interval') else fmt(v.balanced_accuracy_drop) }}</td><td class="l">{{ (v.reasons or []) | join('; ') }}</td></tr>{% endfor %}
</table>
<p class="muted">Values [95% intervals over lesions]. A file fails when its agreement interval lies wholly below the bound, or when the upper bound of its balanced-accuracy drop exceeds the allowed drop.</p>{% elif r.pushed.mobile_note %}<p class="muted">Mobile export: {{ r.pushed.mobile_note }}</p>{% endif %}
</section>
</main></body></html>
"""


_CARD_MD_TEMPLATE = """# Model card: {{ c.name }}

Version: {{ c.version }} · generated {{ c.generated }} · {{ c.verdict }}

## Intended use

{{ c.intended_use }}

Out of scope: {{ c.out_of_scope }}

## Model

{{ c.model_description }}

## Training data and its known biases

{% for line in c.data_lines %}- {{ line }}
{% endfor %}
| class | {% for s in c.splits %}{{ s }} | {% endfor %}
|---|{% for s in c.splits %}---:|{% endfor %}
{% for row in c.class_rows %}| {{ row[0] }} | {% for v in row[1:] %}{{ v }} | {% endfor %}
{% endfor %}
Known biases:
{% for line in c.biases %}
- {{ line }}{% endfor %}

## Metrics (test split, {{ c.test_examples }} images)

{% for name, value in c.headline %}- **{{ name }}**: {{ value }}
{% endfor %}
| class | {% for col in c.class_metric_columns %}{{ col }} | {% endfor %}
|---|{% for col in c.class_metric_columns %}---:|{% endfor %}
{% for row in c.class_metric_rows %}| {{ row.label }} | {% for v in row['values'] %}{{ v }} | {% endfor %}
{% endfor %}
### Per slice
{% for t in c.slices %}
**{{ t.family }}**{% if t.failed %} (a gate failed){% endif %}

| group | {% for col in t.columns %}{{ col }} | {% endfor %}
|---|{% for col in t.columns %}---:|{% endfor %}
{% for row in t.rows %}| {{ row.group }}{% if row.failed %} ⚠{% endif %} | {% for v in row['values'] %}{{ v }} | {% endfor %}
{% endfor %}| spread | {% for g in t.gaps %}{{ g }} | {% endfor %}
{% else %}
No slices were evaluated.
{% endfor %}
## Limitations
{% for line in c.limitations %}
- {{ line }}{% endfor %}

## How it was gated
{% for line in c.gating %}
- {{ line }}{% endfor %}
"""


_CARD_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {{ c.name }}</title>
<style>{{ css }}</style></head><body>
<header><h1>Model card: {{ c.name }}</h1><div>Version {{ c.version }} &middot; generated {{ c.generated }} &middot; {{ c.verdict }}</div></header>
<main>
<section id="intended-use"><h2>Intended use</h2><p>{{ c.intended_use }}</p><p><b>Out of scope:</b> {{ c.out_of_scope }}</p></section>
<section id="model"><h2>Model</h2><p>{{ c.model_description }}</p></section>
<section id="training-data"><h2>Training data and its known biases</h2>
<ul>{% for line in c.data_lines %}<li>{{ line }}</li>{% endfor %}</ul>
<table><tr><th class="l">class</th>{% for s in c.splits %}<th>{{ s }}</th>{% endfor %}</tr>
{% for row in c.class_rows %}<tr><td class="l">{{ row[0] }}</td>{% for v in row[1:] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
<h3>Known biases</h3><ul>{% for line in c.biases %}<li>{{ line }}</li>{% endfor %}</ul></section>
<section id="metrics"><h2>Metrics (test split, {{ c.test_examples }} images)</h2>
<ul>{% for name, value in c.headline %}<li><b>{{ name }}</b>: {{ value }}</li>{% endfor %}</ul>
<table><tr><th class="l">class</th>{% for col in c.class_metric_columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in c.class_metric_rows %}<tr><td class="l">{{ row.label }}</td>{% for v in row['values'] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
<h3>Per slice</h3>
{% for t in c.slices %}<h4>{{ t.family }}</h4>
<table><tr><th class="l">group</th>{% for col in t.columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr{% if row.failed %} class="failed"{% endif %}><td class="l">{{ row.group }}</td>{% for v in row['values'] %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}
<tr class="gap"><td class="l">spread</td>{% for g in t.gaps %}<td>{{ g }}</td>{% endfor %}</tr></table>
{% else %}<p>No slices were evaluated.</p>{% endfor %}</section>
<section id="limitations"><h2>Limitations</h2><ul>{% for line in c.limitations %}<li>{{ line }}</li>{% endfor %}</ul></section>
<section id="gating"><h2>How it was gated</h2><ul>{% for line in c.gating %}<li>{{ line }}</li>{% endfor %}</ul></section>
</main></body></html>
"""


def _environment() -> jinja2.Environment:
  env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True)
  env.globals['fmt'] = fmt
  env.globals['itext'] = intervals_lib.text
  return env
