"""The token-level credit report: one self-contained HTML page from a run's records.

    python -m credit_plugin.report RUN_DIR [--out FILE] [--max-steps N]

Reads ``RUN_DIR/token_records.jsonl`` (written by the trainer with ``credit.token_records: N``,
``credit_plugin.token_records``) and, where present, ``RUN_DIR/metrics.jsonl`` (verl's file logger records, as
``recipes/tiny_cpu/demo.py`` and ``bench/learn.py`` keep them), and writes ``RUN_DIR/credit_report.html``:

- per recorded sample: the prompt, the outcome, the feedback and sibling solution the teacher saw, and the
  response's tokens twice side by side, coloured by SDPO's token reward ``T - S`` and by CREDIT's (green
  credit, red debit, one colour scale for both columns; hovering a token shows ``T``, ``g``, ``S`` and both
  rewards); a step selector shows one step at a time;
- the step diagnostics as line plots (reward, pMI, the generic share of SDPO's credit, the correlation of
  CREDIT's and SDPO's advantages, entropy, response length...), from ``metrics.jsonl``, or from the records
  themselves when the run has no metrics file.

The page has no external resource: CSS, the step selector's JavaScript and the plots (SVG) are inline, so it
opens offline and can be attached to an issue. Standard library only.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

RECORDS_FILE = "token_records.jsonl"  # credit_plugin.token_records.RECORDS_FILE (no torch import here)
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "credit_report.html"
# (metrics key, plot title); a key the run did not log is skipped.
PLOTS = [
    ("critic/score/mean", "training reward"),
    ("credit/pmi_mean", "pMI log pi(y|x,z) - log pi(y|x), mean over samples with context"),
    ("credit/generic_share", "generic share of SDPO's credit: sum |T-S| min(1, exp(g-T)) / sum |T-S|"),
    ("credit/advantage_correlation", "correlation of CREDIT's and SDPO's token rewards"),
    ("credit/contrast_gap_mean", "contrast gap T - g, summed over the response"),
    ("credit/advantage/token_mean", "mean token advantage"),
    ("credit/teacher/context_fraction", "fraction of samples with a teacher context"),
    ("actor/entropy", "policy entropy"),
    ("response_length/mean", "response length"),
]
# Plots from the records alone (a run without metrics.jsonl): per step, the mean over recorded scored tokens.
RECORD_PLOTS = [("sdpo", "SDPO token reward, recorded samples"), ("credit", "CREDIT token reward, recorded samples")]

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plot { border: 1px solid #ddd; padding: 4px; }
.plot .title { font-size: 12px; max-width: 300px; }
.sample { border: 1px solid #ccc; border-radius: 4px; padding: 8px; margin: 10px 0; }
.meta { font-size: 13px; white-space: pre-wrap; margin: 2px 0; }
.meta b { color: #555; }
.cols { display: flex; gap: 16px; }
.col { flex: 1; min-width: 0; }
.col h3 { font-size: 13px; margin: 4px 0; }
.tokens { font-family: Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9; white-space: pre-wrap;
  word-break: break-all; }
.tok { border-radius: 2px; padding: 1px 0; }
.legend { font-size: 12px; }
.step { display: none; } .step.shown { display: block; }
.ok { color: #176; } .bad { color: #a22; }
"""

SCRIPT = """
function showStep(value) {
  document.querySelectorAll('.step').forEach(function (el) {
    el.classList.toggle('shown', el.dataset.step === value);
  });
}
document.addEventListener('DOMContentLoaded', function () {
  var select = document.getElementById('step-select');
  if (select) { showStep(select.value); select.addEventListener('change', function () { showStep(select.value); }); }
});
"""


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut off by a killed run (the last one) is skipped."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}: line {number + 1} is not JSON") from None
    return records


def latest_per_sample(records: Iterable[dict]) -> list[dict]:
    """A resumed run records its steps after the checkpoint again: keep the last record of each (step, row)."""
    kept: dict[tuple[int, int], dict] = {}
    for record in records:
        kept[(int(record["step"]), int(record["row"]))] = record
    return [kept[key] for key in sorted(kept)]


def metric_series(metrics: Iterable[dict], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of ``key`` over verl's file-logger records (``{"step": n, "data": {...}}``), last wins."""
    series: dict[float, float] = {}
    for record in metrics:
        data = record.get("data", record)
        value = data.get(key)
        step = record.get("step", data.get("training/global_step"))
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and step is not None:
            series[float(step)] = float(value)
    return sorted(series.items())


def record_series(records: Sequence[dict], key: str) -> list[tuple[float, float]]:
    """Per step, the mean of ``key`` (a per-token list) over the recorded samples with a teacher context."""
    sums: dict[int, list[float]] = {}
    for record in records:
        values = record.get(key)
        if values and record.get("has_context"):
            sums.setdefault(int(record["step"]), []).extend(values)
    return [(float(step), sum(values) / len(values)) for step, values in sorted(sums.items()) if values]


def svg_plot(points: Sequence[tuple[float, float]], title: str, width: int = 300, height: int = 150) -> str:
    """A line plot of ``points`` as inline SVG, with its value range and step range written on it."""
    pad_left, pad, pad_bottom = 44, 8, 18
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 1.0, y1 + 1.0
    if x1 == x0:
        x0, x1 = x0 - 1.0, x1 + 1.0

    def sx(x: float) -> float:
        return pad_left + (x - x0) / (x1 - x0) * (width - pad_left - pad)

    def sy(y: float) -> float:
        return height - pad_bottom - (y - y0) / (y1 - y0) * (height - pad_bottom - pad)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="#1f6fb2"/>' for x, y in points)
    zero = ""
    if y0 < 0 < y1:
        zero = (
            f'<line x1="{pad_left}" x2="{width - pad}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" '
            'stroke="#bbb" stroke-dasharray="3,3"/>'
        )
    return (
        f'<div class="plot"><div class="title">{html.escape(title)}</div>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f'<rect x="{pad_left}" y="{pad}" width="{width - pad_left - pad}" height="{height - pad - pad_bottom}" '
        'fill="none" stroke="#ccc"/>'
        f"{zero}"
        f'<polyline fill="none" stroke="#1f6fb2" stroke-width="1.5" points="{path}"/>{dots}'
        f'<text x="{pad_left - 3}" y="{pad + 9}" font-size="10" text-anchor="end">{y1:.3g}</text>'
        f'<text x="{pad_left - 3}" y="{height - pad_bottom}" font-size="10" text-anchor="end">{y0:.3g}</text>'
        f'<text x="{pad_left}" y="{height - 4}" font-size="10">step {x0:g}</text>'
        f'<text x="{width - pad}" y="{height - 4}" font-size="10" text-anchor="end">{x1:g}</text>'
        "</svg></div>"
    )


def colour(value: float | None, scale: float) -> str:
    """Background colour of a token reward: green for credit, red for debit, white at 0 or unscored."""
    if value is None or scale <= 0:
        return "transparent"
    strength = max(-1.0, min(1.0, value / scale))
    alpha = abs(strength) * 0.85
    return f"rgba(20,150,60,{alpha:.3f})" if strength > 0 else f"rgba(210,40,40,{alpha:.3f})"


def colour_scale(records: Sequence[dict]) -> float:
    """One scale for both columns: the 95th percentile of |reward| over every recorded scored token."""
    values = sorted(
        abs(value)
        for record in records
        if record.get("has_context")
        for key in ("sdpo", "credit")
        for value in record.get(key) or []
    )
    if not values:
        return 1.0
    return values[min(len(values) - 1, int(0.95 * len(values)))] or max(values) or 1.0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def token_spans(record: dict, key: str, scale: float) -> str:
    """The response's tokens as spans coloured by ``record[key]`` (SDPO or CREDIT), with a tooltip of scores."""
    rewards = record.get(key)
    spans = []
    for index, token in enumerate(record["tokens"]):

        def at(name: str, index: int = index) -> float | None:
            values = record.get(name)
            return values[index] if values else None

        value = rewards[index] if rewards and record.get("has_context") else None
        tip = (
            f"token {index}: {token!r}\nT (teacher) {_fmt(at('teacher_log_probs'))}\n"
            f"g (baseline) {_fmt(at('baseline_log_probs'))}\nS (student) {_fmt(at('student_log_probs'))}\n"
            f"SDPO {_fmt(at('sdpo'))}\nCREDIT {_fmt(at('credit'))}"
        )
        spans.append(
            f'<span class="tok" data-key="{key}" data-index="{index}" style="background:{colour(value, scale)}" '
            f'title="{html.escape(tip)}">{html.escape(token)}</span>'
        )
    return "".join(spans)


def sample_html(record: dict, scale: float) -> str:
    outcome = record.get("outcome", 0.0)
    verdict = "ok" if outcome >= 0.5 else "bad"
    lines = [
        f'<div class="meta"><b>prompt</b> {html.escape(record.get("prompt") or "")}</div>',
        f'<div class="meta"><b>outcome</b> <span class="{verdict}">{outcome:g}</span>'
        f" &middot; <b>uid</b> {html.escape(str(record.get('uid')))} &middot; <b>row</b> {record.get('row')}"
        f"{'' if record.get('has_context') else ' &middot; no teacher context: no distillation credit'}</div>",
    ]
    if record.get("solution"):
        lines.append(f'<div class="meta"><b>sibling solution</b> {html.escape(record["solution"])}</div>')
    if record.get("feedback"):
        lines.append(f'<div class="meta"><b>feedback</b> {html.escape(record["feedback"])}</div>')

    def total(key: str) -> str:
        values = record.get(key)
        return f"sum {sum(values):+.3f}" if values and record.get("has_context") else "not available"

    credit_title = f"CREDIT (lambda {record.get('contrast_coef')}, form {record.get('contrast_form')})"
    credit_body = (
        token_spans(record, "credit", scale)
        if record.get("credit") is not None
        else "<i>no contrastive baseline in this run (SDPO): only SDPO's credit exists</i>"
    )
    columns = (
        '<div class="cols">'
        f'<div class="col"><h3>SDPO: T - S ({total("sdpo")})</h3><div class="tokens">'
        f"{token_spans(record, 'sdpo', scale)}</div></div>"
        f'<div class="col"><h3>{html.escape(credit_title)} ({total("credit")})</h3><div class="tokens">'
        f"{credit_body}</div></div></div>"
    )
    return f'<div class="sample">{"".join(lines)}{columns}</div>'


def pick_steps(steps: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` steps, evenly spread, always keeping the first and the last."""
    if limit <= 0 or len(steps) <= limit:
        return list(steps)
    if limit == 1:
        return [steps[-1]]
    picked = {steps[round(i * (len(steps) - 1) / (limit - 1))] for i in range(limit)}
    return sorted(picked)


def render(records: Sequence[dict], metrics: Sequence[dict], title: str, max_steps: int = 50) -> str:
    """The whole page as one HTML string."""
    records = latest_per_sample(records)
    plots = [svg_plot(points, name) for key, name in PLOTS if (points := metric_series(metrics, key))]
    if not plots:
        plots = [svg_plot(points, name) for key, name in RECORD_PLOTS if (points := record_series(records, key))]
    steps = pick_steps(sorted({int(record["step"]) for record in records}), max_steps)
    scale = colour_scale(records)
    options, sections = [], []
    for step in steps:
        # samples with a teacher context (the ones with credit) first, in the order the trainer chose them
        chosen = sorted(
            (record for record in records if int(record["step"]) == step),
            key=lambda record: (not record.get("has_context"), int(record["row"])),
        )
        selected = " selected" if step == steps[-1] else ""
        options.append(f'<option value="{step}"{selected}>step {step} ({len(chosen)} samples)</option>')
        body = "".join(sample_html(record, scale) for record in chosen)
        shown = " shown" if step == steps[-1] else ""
        sections.append(f'<div class="step{shown}" data-step="{step}">{body}</div>')
    selector = (
        f'<label>Step: <select id="step-select">{"".join(options)}</select></label>'
        if steps
        else "<p>No token records: run with credit.token_records=N (N samples per step).</p>"
    )
    legend = (
        f'<p class="legend">Token colour: <span style="background:{colour(scale, scale)}">credit</span> / '
        f'<span style="background:{colour(-scale, scale)}">debit</span>, full colour at |reward| = {scale:.3g} '
        "nats (95th percentile of both columns); hover a token for T (teacher with feedback), g (teacher with "
        "other groups' prompts), S (student) and both rewards.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<h2>Step diagnostics</h2><div class="plots">{"".join(plots) or "<p>No step metrics found.</p>"}</div>'
        f"<h2>Token credit: SDPO and CREDIT side by side</h2>{legend}{selector}{''.join(sections)}"
        "</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, max_steps: int = 50) -> Path:
    """Render ``run_dir``'s records and metrics into ``out`` (default ``run_dir/credit_report.html``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"credit report: {run_dir} is not a folder")
    records = read_jsonl(run_dir / RECORDS_FILE)
    metrics = read_jsonl(run_dir / METRICS_FILE)
    if not records and not metrics:
        raise FileNotFoundError(
            f"credit report: {run_dir} has neither {RECORDS_FILE} nor {METRICS_FILE}; run the trainer with "
            "credit.token_records=N (and credit.token_records_dir=RUN_DIR, else they go to trainer.default_local_dir)"
        )
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    out.write_text(render(records, metrics, f"Credit report: {run_dir.resolve().name}", max_steps))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help=f"folder holding {RECORDS_FILE} (and {METRICS_FILE})")
    parser.add_argument("--out", type=Path, default=None, help=f"HTML file (default RUN_DIR/{REPORT_FILE})")
    parser.add_argument("--max-steps", type=int, default=50, help="steps shown, evenly spread (0: all)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.out, args.max_steps))


if __name__ == "__main__":
    main()
