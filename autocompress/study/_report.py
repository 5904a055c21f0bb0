"""A self-contained HTML report of a search run: settings, front, picked model, per layer.

Everything the page needs is in the one file: the plots are PNG data URIs and the style
sheet is inline, so the report can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autocompress._io import write_text_atomic
from autocompress.study._config import RunFolder
from autocompress.study._front import FrontMember, ParetoFront
from autocompress.study._pick import load_front, load_study
from autocompress.study._records import RunInfo, TrialRecord

__all__ = ["write_report"]

_logger = logging.getLogger(__name__)

_DEFAULT_PRECISION = "fp32"
_PRECISION_COLORS = {"fp32": "#6a8caf", "fp16": "#66a182", "bf16": "#8fb996",
                     "int8": "#edae49", "int4": "#d1495b"}
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{padding:.3em .7em;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left} table.kv td:first-child{color:#555;font-weight:600}
tr.picked td{background:#fdf3dc;font-weight:600}
img{max-width:100%;border:1px solid #eee} .note{color:#666;font-size:.9em}
"""


@dataclass(frozen=True)
class _Picked:
    """The model the report details: a front member or the one ``pick`` exported."""

    trial: int
    accuracy: float
    predicted_latency_ms: float
    latency_source: str
    candidate: Mapping[str, Any]
    measured_latency_ms: float | None = None
    measured_on: str | None = None
    export: Path | None = None
    budget_ms: float | None = None
    search_accuracy: float | None = None    # set when pick finetuned it again
    finetune_steps: int | None = None


def write_report(run: str | Path, out: str | Path | None = None, *,
                 storage: str | None = None) -> Path:
    """Write the HTML report of run folder ``run`` to ``out`` (default ``run/report.html``).

    The picked model is the one ``autocompress pick`` exported, when an export's
    ``candidate.json`` names this run (``run/export/`` or any folder beside or in ``run``);
    otherwise the most accurate front member within the search's budget.
    """
    folder = RunFolder.open(run)
    front = load_front(folder.path, storage=storage)
    trials = load_study(folder, storage).get_trials(deepcopy=False)
    picked = _from_export(folder) or _from_front(front)
    record = front.records.get(picked.trial) if picked is not None else None
    out_path = Path(out) if out is not None else folder.path / "report.html"
    sections = [_header(folder, trials, front), _front_section(front, picked),
                _picked_section(front, picked, record)]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>autocompress report: {escape(folder.run.model)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    write_text_atomic(out_path, page)
    _logger.info("report written to %s", out_path)
    return out_path


# ------------------------------------------------------------------------------ picking

def _from_front(front: ParetoFront) -> _Picked | None:
    member: FrontMember | None = (front.pick(front.budget_ms) if front.budget_ms is not None
                                  else front.fastest())
    if member is None:
        return None
    return _Picked(member.trial, member.accuracy, member.predicted_latency_ms,
                   member.latency_source, member.candidate.to_dict())


def _from_export(folder: RunFolder) -> _Picked | None:
    """The newest export ``candidate.json`` that belongs to this run, if any."""
    here = folder.path.resolve()
    found: list[tuple[float, Path, dict[str, Any]]] = []
    for path in dict.fromkeys([*folder.path.glob("*/candidate.json"),
                               *folder.path.parent.glob("*/candidate.json")]):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "trial" not in data or "config" not in data:
            continue
        named = data.get("run")
        if path.parent == folder.path / "export" or (named and Path(named).resolve() == here):
            found.append((path.stat().st_mtime, path, data))
    if not found:
        return None
    _, path, data = max(found, key=lambda f: f[0])
    measured = data.get("measured_latency_ms")
    return _Picked(int(data["trial"]), float(data["accuracy"]),
                   float(data["predicted_latency_ms"]), str(data.get("latency_source", "estimate")),
                   data["config"], None if measured is None else float(measured),
                   data.get("latency_measured_on"), path,
                   data.get("latency_budget_ms"), data.get("search_accuracy"),
                   data.get("finetune_steps"))


# ------------------------------------------------------------------------------ sections

def _header(folder: RunFolder, trials: Sequence[optuna.trial.FrozenTrial],
            front: ParetoFront) -> str:
    info = folder.run
    base, cal, budget = info.baseline, info.calibration, info.budget
    complete = sum(1 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    tuned = sum(1 for r in front.records.values() if r.finetuned)
    failed = sum(1 for t in trials if t.state == optuna.trial.TrialState.FAIL)
    fitted = f"fitted on {len(cal.points)} measured point(s)" if cal.applied else "not applied"
    rows = [
        ("model", info.model), ("data", info.data),
        *_data_rows(info),
        ("latency budget", f"{_ms(budget.latency_ms)} ({budget.source})"),
        ("baseline accuracy", _num(base.accuracy, ".4f")),
        ("baseline latency", f"{_ms(base.latency_ms)} ({base.latency_source})"),
        ("baseline size", f"{_int(base.params)} params, "
                          f"{_num(_div(base.flops, 1e6), '.2f')} MFLOPs"),
        ("trials", f"{len(trials)}: {tuned} finetuned, {complete - tuned} over budget, "
                   f"{failed} failed"),
        ("profile", info.profile.describe),
        ("calibration", f"measured = {_num(cal.offset_ms, '+.4f')} ms + "
                        f"{_num(cal.scale, '.4f')} × estimate"
                        f"{escape(cal.describe_precisions())} ({fitted})"),
        ("run", f"{folder.path} (created {info.created}, "
                f"autocompress {info.autocompress_version})"),
        ("report date", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")),
    ]
    return (f"<h1>autocompress report: {escape(info.model)} on {escape(info.data)}</h1>\n"
            + _kv_table(rows))


def _data_rows(info: RunInfo) -> list[tuple[str, str]]:
    """Where the validation accuracies come from, and the preprocessing."""
    record = info.data_record
    if record is None:
        return []
    return [("validation", record.validation_note()),
            ("preprocessing", record.preprocessing.describe()
             + (" (embedded in exported models)" if record.preprocessing.embedded else ""))]


def _front_section(front: ParetoFront, picked: _Picked | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        png = front.plot(Path(tmp) / "front.png").read_bytes()
    parts = ["<h2>Pareto front</h2>", _img(png, "accuracy vs latency, front and budget")]
    if not front.members:
        parts.append("<p class='note'>No finetuned trial within budget yet.</p>")
        return "\n".join(parts)
    parts.append(_front_table(front, picked))
    parts.append("<p class='note'>latency: profile estimate, calibrated; 'measured' where the "
                 "candidate was near the budget and the profile is of the search machine. "
                 "accuracy: of the exported model (quantized models: run in ONNX Runtime).</p>")
    return "\n".join(parts)


def _front_table(front: ParetoFront, picked: _Picked | None) -> str:
    """The front as an HTML table (pandas), the picked member marked."""
    frame = front.to_frame()
    picked_trial = picked.trial if picked is not None else None
    table = pd.DataFrame({
        "": ["★" if t == picked_trial else "" for t in frame["trial"]],
        "trial": frame["trial"],
        "kind": [k + (f" ({f})" if f else "") for k, f in zip(frame["kind"], frame["family"],
                                                             strict=True)],
        "precision": frame["precision"],
        "accuracy": frame["accuracy"].map("{:.4f}".format),
        "latency (ms)": frame["predicted_latency_ms"].map("{:.4g}".format),
        "± (ms)": frame["predicted_latency_std_ms"].map("{:.2g}".format),
        "source": frame["latency_source"],
        "size (kB)": (frame["size_bytes"] / 1e3).map("{:,.1f}".format),
        "compressed (kB)": (frame["compressed_size_bytes"] / 1e3).map("{:,.1f}".format),
        "params": frame["params"].map("{:,}".format),
        "non-zero params": frame["nonzero_params"].map("{:,}".format),
        "MFLOPs": (frame["flops"] / 1e6).map("{:,.2f}".format),
        "sparsity": frame["sparsity"].map("{:.1%}".format),
    })
    html = table.to_html(index=False, classes="front", border=0, escape=True)
    # the picked row stands out
    return html.replace("<tr>\n      <td>★</td>", "<tr class='picked'>\n      <td>★</td>")


def _picked_section(front: ParetoFront, picked: _Picked | None,
                    record: TrialRecord | None) -> str:
    if picked is None:
        return "<h2>Picked model</h2><p>No front member fits the budget.</p>"
    origin = (f"exported by autocompress pick to {picked.export.parent}" if picked.export
              else f"the most accurate front member within {_ms(front.budget_ms)}")
    if picked.measured_latency_ms is not None:
        error = _div(picked.measured_latency_ms - picked.predicted_latency_ms,
                     picked.predicted_latency_ms)
        measured = (f"{_ms(picked.measured_latency_ms)} on {picked.measured_on or '?'} "
                    f"({_num(error, '+.1%')} vs predicted)")
    elif picked.export is not None:
        measured = "not measured: the profile is of another device"
    else:
        measured = "not measured; run autocompress pick"
    rows = [("trial", picked.trial), ("source", origin),
            ("accuracy", _num(picked.accuracy, ".4f") + (
                "" if picked.search_accuracy is None else
                f" after {picked.finetune_steps} finetune steps at pick "
                f"({_num(picked.search_accuracy, '.4f')} in the search)")),
            ("predicted latency", f"{_ms(picked.predicted_latency_ms)} ({picked.latency_source})"),
            ("profile estimate", _ms(record.estimated_latency_ms if record else None)),
            ("measured latency", measured),
            ("budget", _ms(picked.budget_ms if picked.budget_ms is not None
                           else front.budget_ms))]
    channels = dict(record.channels) if record else {}
    png = _layer_chart(channels, picked.candidate)
    return ("<h2>Picked model</h2>\n" + _kv_table(rows) + "\n<h3>Per layer</h3>\n"
            + _img(png, "channels, sparsity and precision per layer"))


# ------------------------------------------------------------------------------ charts

def _layer_chart(channels: Mapping[str, tuple[int, int]], candidate: Mapping[str, Any]) -> bytes:
    """Kept channels per group (before vs after) on top; sparsity and precision per layer."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    sparsity: Mapping[str, float] = candidate.get("sparsity", {})
    precision: Mapping[str, str] = candidate.get("precision", {})
    layers = list(dict.fromkeys([*sparsity, *precision]))
    groups = list(channels)
    fig = Figure(figsize=(10, 1.6 + 0.22 * (len(groups) + len(layers))), dpi=110)
    grid = fig.add_gridspec(2, 2, width_ratios=[5, 1],
                            height_ratios=[max(len(groups), 1) + 2, max(len(layers), 1) + 2])
    ax_ch = fig.add_subplot(grid[0, :])
    ax_sp = fig.add_subplot(grid[1, 0])
    ax_pr = fig.add_subplot(grid[1, 1], sharey=ax_sp)
    ax_ch.set_title("kept output channels per channel group", fontsize=10, loc="left")
    if groups:
        pos = range(len(groups))
        ax_ch.barh(pos, [channels[g][0] for g in groups], color="#d9d9d9", label="before")
        ax_ch.barh(pos, [channels[g][1] for g in groups], color="#d1495b", height=0.5,
                   label="after")
        for i, g in enumerate(groups):
            ax_ch.text(channels[g][0], i, f" {channels[g][1]}/{channels[g][0]}",
                       va="center", fontsize=7)
        _layer_axis(ax_ch, groups)
        ax_ch.margins(x=0.08)
        ax_ch.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncol=2,
                     frameon=False, borderaxespad=0.1)
    ax_sp.set_title("sparsity per layer (fraction of weights zeroed)", fontsize=10, loc="left")
    ax_sp.set_xlim(0, 1)
    ax_pr.set_title("precision", fontsize=10)
    ax_pr.set_xlim(0, 1)
    ax_pr.set_xticks([])
    if layers:
        values = [float(sparsity.get(n, 0.0)) for n in layers]
        ax_sp.barh(range(len(layers)), values, color="#6a8caf")
        for i, v in enumerate(values):
            ax_sp.text(v, i, f" {v:.0%}", va="center", fontsize=7)
        _layer_axis(ax_sp, layers)
        precisions = [str(precision.get(n, _DEFAULT_PRECISION)) for n in layers]
        ax_pr.barh(range(len(layers)), [1] * len(layers), height=1, edgecolor="white",
                   color=[_PRECISION_COLORS.get(p, "#999999") for p in precisions])
        for i, p in enumerate(precisions):
            ax_pr.text(0.5, i, p, ha="center", va="center", fontsize=7, color="white")
        ax_pr.tick_params(axis="y", labelleft=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _layer_axis(ax: Any, names: Sequence[str], *, labels: bool = True) -> None:
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names if labels else [], fontsize=7)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)


# ------------------------------------------------------------------------------ html bits

def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img src=\"data:image/png;base64,{data}\" alt=\"{escape(alt)}\">"


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    return ("<table class='kv'>" + "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>")


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _num(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g} ms"


def _int(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"
