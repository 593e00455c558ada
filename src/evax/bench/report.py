"""``OUT/report.md``: every table that was run, next to the papers' published numbers.

The report is rebuilt from the ``OUT/<table>.json`` files, so it can be regenerated at any
time (``evax bench report --out OUT``) and always shows what the last run of each table wrote:
the machine, the settings (models, datasets, n, EVA configuration, budgets), the seeds, the
cache statistics, per-cell errors, and the figures.

A cell reads ``ours (paper)``; ``n/a`` where the method does not apply (as in the paper), and
``ERR`` with a footnote where a component failed or was not available.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evax.bench.published import EVA_TABLE1_IMAGES
from evax.bench.registry import TABLES, table_spec


def title(name: str) -> str:
    """The table's title (its spec's)."""
    return table_spec(name).title if name in TABLES else name

METRIC_LABELS = {
    "deletion": "Del.↓", "insertion": "Ins.↑", "mufidelity": "Fid.↑", "robustness": "Rob.↓",
    "tightness": "Tight.↓", "seconds": "s/expl.", "sens_max": "SENS_MAX↓", "infd": "INFD↓",
    "spearman": "Corr↓", "spearman_abs": "Corr (abs)↓", "certified": "certified↑",
}
# the published time column is a total over the paper's images; shown per explanation
_TIME_IMAGES = {"eva-table1": EVA_TABLE1_IMAGES, "eva-table3": {"mnist": 100, "cifar10": 100, "imagenet": 100}}
# the harness's method names that the paper calls differently (Table 2 rows are bound methods)
_PUBLISHED_ALIASES = {"infidelity-table2": {"mnist": "imagenet-resnet50", "cifar10": "imagenet-resnet50",
                                             "imagenet": "imagenet-resnet50"}}


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if 0 < a < 0.01:
        return f"{v:.1e}"
    return f"{v:.3f}"


def _published(name: str, meta: dict, setting: str, method: str, metric: str) -> float | None | str:
    pub = meta.get("published") or {}
    key = _PUBLISHED_ALIASES.get(name, {}).get(setting, setting)
    row = (pub.get(key) or {}).get(method)
    if row is None:
        return "absent"
    m = "time" if metric == "seconds" else metric
    if m not in row:
        return "absent"
    v = row[m]
    if v is not None and m == "time":
        v = v / _TIME_IMAGES.get(name, {}).get(setting, 1)
    return v


def render_table(name: str, data: dict) -> str:
    """Markdown of one table from its JSON (``{"meta", "rows"}``)."""
    meta, rows = data["meta"], data["rows"]
    lines = [f"## {title(name)}", ""]
    notes: list[str] = []
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for setting in settings:
        srows = [r for r in rows if r["setting"] == setting]
        metrics = list(dict.fromkeys(r["metric"] for r in srows))
        methods = list(dict.fromkeys(r["method"] for r in srows))
        sm = (meta.get("settings") or {}).get(setting, {})
        n = (meta.get("n_images") or {}).get(setting)
        lines.append(f"### {setting} — {sm.get('model', '?')} on {sm.get('dataset', '?')}, n = {n}")
        if sm.get("note"):
            lines.append(f"_{sm['note']}_" + (f"; EVA: `{json.dumps(sm['eva'])}`" if sm.get("eva") else ""))
        lines.append("")
        lines.append("| method | " + " | ".join(METRIC_LABELS.get(m, m) for m in metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        by = {(r["method"], r["metric"]): r for r in srows}
        for method in methods:
            cells = []
            for metric in metrics:
                r = by.get((method, metric))
                ours: str
                if r is None:
                    ours = "–"
                elif r["error"] is not None:
                    if r["error"].startswith("n/a"):
                        ours = "n/a"
                    else:
                        notes.append(f"{setting}/{method}/{metric}: {r['error']}")
                        ours = f"ERR[{len(notes)}]"
                else:
                    ours = _fmt(r["mean"])
                    se = r.get("se")
                    if isinstance(se, float) and math.isfinite(se):
                        ours += f" ± {_fmt(se)}"
                    if r.get("diff") is not None:  # paired difference to the table's reference
                        ours += f" (Δ {r['diff']:+.3f} ± {r['diff_se']:.3f})"
                pub = _published(name, meta, setting, method, metric)
                cells.append(ours if pub == "absent" else f"{ours} ({'n/a' if pub is None else _fmt(pub)})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if meta.get("reference"):
        lines.append(f"(Δ d ± SE): paired difference method - {meta['reference']} on the same images.")
    if meta.get("published"):
        lines.append("Cells: `ours (paper)`; the paper's time is divided by its number of images "
                     "(seconds per explanation on its GPU).")
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    if notes:
        lines.append("")
        lines.append("Errors:")
        lines += [f"{i}. {msg}" for i, msg in enumerate(notes, start=1)]
    lines.append("")
    lines.append(
        f"Run: seed {meta.get('seed')} ({meta.get('seeds', '')}), workers {meta.get('workers')}, "
        f"device {meta.get('device')}, cells {meta.get('cells')}, wall {meta.get('wall_seconds', 0):.0f} s"
        + (", quick budgets (test run)" if meta.get("quick") else "")
    )
    for fig in meta.get("figures", []) or ([meta["figure"]] if meta.get("figure") else []):
        lines.append("")
        lines.append(f"![{fig}]({fig})")
    lines.append("")
    return "\n".join(lines)


def render_targeted(data: dict) -> str:
    meta, rows = data["meta"], data["rows"]
    s = meta["settings"]["mnist"]
    lines = [f"## {title('targeted')}", "",
             f"{s['model']} on {s['dataset']}, n = {len(rows)}, eps {s['eps']}, `{s['method']}`, 12x12 grid.", "",
             "| image | label | predicted | s (10 maps) |", "|---|---|---|---|"]
    for r in rows:
        sec = r.get("seconds")
        lines.append(f"| {r['index']} | {r['label']} | {r['predicted']} | {_fmt(sec)} |")
    lines += ["", f"![targeted]({meta.get('figure', 'targeted.png')})", ""]
    return "\n".join(lines)


def write_report(out: str | Path) -> Path:
    """Render ``OUT/report.md`` from the tables' JSON files present in ``OUT``."""
    out = Path(out)
    parts = ["# evax bench — reproduction report", ""]
    machine: dict[str, Any] | None = None
    found = []
    for name in TABLES:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machine = machine or data["meta"].get("machine")
        found.append(name)
        parts.append(render_targeted(data) if name == "targeted" else render_table(name, data))
    if machine:
        parts.insert(2, "Machine: " + ", ".join(f"{k} = {v}" for k, v in machine.items()) + "\n")
    if not found:
        parts.append("No table has been run in this folder yet (`evax bench TABLE --out DIR`).")
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
