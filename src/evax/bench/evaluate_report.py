"""The report of ``evax evaluate``: tables (CSV + markdown), figures (PNG) and one HTML page.

Files written in ``OUT``:

* ``results.csv``: one row per (method, image): every metric, the seconds, the errors;
* ``table.csv`` / ``table.md``: per method and metric the mean over images, its standard error
  ``SE = sd / sqrt(n)``, and against the reference method the *paired* difference
  ``mean_i (m_i - ref_i)`` with its SE (the same images, so image-to-image variance cancels);
* ``heatmaps.png``: every method's map side by side, one row per image (first 8 images);
* ``curves.png``: mean Deletion / Insertion curves per method (when those metrics ran);
* ``report.md`` / ``report.html``: the settings (every default), the table and the figures.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import torch

from evax.bench.evaluate import LOWER_IS_BETTER

MAX_HEATMAP_ROWS = 8


def _stats(vals: list[float]) -> tuple[float, float]:
    t = torch.tensor(vals, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(t.mean()), se


def summarize(cells: list, records: dict, methods: list[str], metrics: list[str],
              reference: str | None) -> list[dict]:
    """Rows ``{method, metric, n, mean, se, diff, diff_se, error}`` (diff vs ``reference``)."""
    per: dict[tuple[str, str], dict[int, float]] = {}
    errs: dict[tuple[str, str], str] = {}
    for c in cells:
        rec = records.get(c.key, {})
        for m in [*metrics, "seconds"]:
            v = rec.get("values", {}).get(m)
            if v is not None:
                per.setdefault((c.method, m), {})[c.index] = float(v)
            elif m in rec.get("errors", {}):
                errs.setdefault((c.method, m), rec["errors"][m])
    n_images = len({c.index for c in cells})
    rows = []
    for method in methods:
        for m in [*metrics, "seconds"]:
            vals = per.get((method, m), {})
            row = {"method": method, "metric": m, "n": len(vals), "mean": None, "se": None,
                   "diff": None, "diff_se": None, "error": errs.get((method, m))}
            if vals:
                row["mean"], row["se"] = _stats(list(vals.values()))
            ref = per.get((reference, m), {}) if reference else {}
            common = sorted(set(vals) & set(ref))
            if reference and method != reference and common and m != "seconds":
                row["diff"], row["diff_se"] = _stats([vals[i] - ref[i] for i in common])
            if len(vals) < n_images and row["error"] is None:
                row["error"] = f"{n_images - len(vals)} image(s) missing"
            rows.append(row)
    return rows


def _fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "—"
    s = f"{v:.4g}"
    if se is not None and math.isfinite(se):
        s += f" ± {se:.2g}"
    return s


def markdown_table(rows: list[dict], methods: list[str], metrics: list[str], reference: str | None) -> str:
    """Methods as rows, metrics as columns: ``mean ± SE`` and, below, ``Δ ref`` lines."""
    cols = [*metrics, "seconds"]
    arrow = {m: (" ↓" if LOWER_IS_BETTER.get(m) else " ↑") if m in LOWER_IS_BETTER else "" for m in cols}
    head = "| method | " + " | ".join(f"{m}{arrow[m]}" for m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    by = {(r["method"], r["metric"]): r for r in rows}
    for method in methods:
        cells = []
        for m in cols:
            r = by[(method, m)]
            text = _fmt(r["mean"], r["se"]) if r["mean"] is not None else f"error: {r['error']}"[:60]
            if r["diff"] is not None:
                text += f" (Δ {_fmt(r['diff'], r['diff_se'])})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    note = (f"\nmean ± standard error over images; (Δ d ± SE): paired difference to **{reference}** on the "
            "same images. ↓ lower is better, ↑ higher is better.") if reference else (
            "\nmean ± standard error over images. ↓ lower is better, ↑ higher is better.")
    return "\n".join(lines) + "\n" + note + "\n"


def write_csvs(out: Path, cells: list, records: dict, rows: list[dict], metrics: list[str],
               names: list[str]) -> None:
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "image", "name", "label", "target", *metrics, "seconds", "errors"])
        for c in cells:
            rec = records.get(c.key, {})
            vals = rec.get("values", {})
            ex = rec.get("extra", {})
            w.writerow([c.method, c.index, names[c.index], ex.get("label"), ex.get("target"),
                        *[vals.get(m) for m in metrics], vals.get("seconds"),
                        json.dumps(rec.get("errors", {})) if rec.get("errors") else ""])
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "metric", "n", "mean", "se", "diff", "diff_se", "error"])
        w.writeheader()
        w.writerows(rows)


def heatmaps_figure(path: Path, images: torch.Tensor, cells: list, records: dict, methods: list[str],
                    names: list[str]) -> Path:
    """Rows = images (first :data:`MAX_HEATMAP_ROWS`), columns = the input then each method's map."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from evax.viz import image_array

    idx = sorted({c.index for c in cells})[:MAX_HEATMAP_ROWS]
    maps = {(c.method, c.index): records.get(c.key, {}).get("tensors", {}).get("map") for c in cells}
    fig, axes = plt.subplots(len(idx), 1 + len(methods), figsize=(1.8 * (1 + len(methods)), 1.9 * len(idx)),
                             squeeze=False)
    for r, i in enumerate(idx):
        img = image_array(images[i])
        axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[r, 0].set_title(names[i][-18:], fontsize=7)
        for k, method in enumerate(methods, start=1):
            m = maps.get((method, i))
            ax = axes[r, k]
            if m is not None:
                a = m[0].float()
                lim = float(a.abs().max()) or 1.0
                signed = bool((a < 0).any())
                ax.imshow(a.numpy(), cmap="coolwarm" if signed else "inferno",
                          vmin=-lim if signed else 0, vmax=lim)
            else:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            if r == 0:
                ax.set_title(method, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def curves_figure(path: Path, cells: list, records: dict, methods: list[str]) -> Path | None:
    """Mean Deletion and Insertion curves (score of the explained class vs fraction of variables)."""
    kinds = [k for k in ("deletion", "insertion")
             if any(f"{k}_curve" in records.get(c.key, {}).get("extra", {}) for c in cells)]
    if not kinds:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for method in methods:
            curves = [records[c.key]["extra"][f"{kind}_curve"] for c in cells
                      if c.method == method and f"{kind}_curve" in records.get(c.key, {}).get("extra", {})]
            fr = next((records[c.key]["extra"][f"{kind}_fractions"] for c in cells
                       if c.method == method and f"{kind}_fractions" in records.get(c.key, {}).get("extra", {})), None)
            if curves and fr is not None:
                ax.plot(fr, torch.tensor(curves).mean(0).numpy(), label=method)
        ax.set_title(f"{kind.capitalize()} (mean over images)")
        ax.set_xlabel("fraction of variables " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("softmax score of the explained class")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(out: Path, table_md: str, settings: dict, figures: list[Path], stats: dict) -> tuple[Path, Path]:
    """``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG)."""
    lines = ["# evax evaluate", "", "## Settings", ""]
    lines += [f"- **{k}**: {v}" for k, v in settings.items()]
    lines += ["", f"cells: {stats.get('computed', 0)} computed, {stats.get('cached', 0)} from the cache", "",
              "## Results", "", table_md, ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    body = ["<h1>evax evaluate</h1>", "<h2>Settings</h2><ul>"]
    body += [f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in settings.items()]
    body += ["</ul>", "<h2>Results</h2>", _md_table_to_html(table_md)]
    for f in figures:
        data = base64.b64encode(f.read_bytes()).decode()
        body.append(f'<h3>{html.escape(f.stem)}</h3><img alt="{html.escape(f.stem)}" '
                    f'src="data:image/png;base64,{data}" style="max-width:100%">')
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>evax evaluate</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    page_path = out / "report.html"
    page_path.write_text(page)
    return md, page_path


def _md_table_to_html(md: str) -> str:
    rows = [r for r in md.splitlines() if r.startswith("|") and not r.startswith("|---")]
    note = "\n".join(r for r in md.splitlines() if r and not r.startswith("|"))
    out = ["<table>"]
    for k, r in enumerate(rows):
        tag = "th" if k == 0 else "td"
        cells = [c.strip() for c in r.strip("|").split("|")]
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out) + f"<p>{html.escape(note.replace('**', ''))}</p>"
