"""Static HTML report of what the store holds: models per element, prediction errors, spectra overlays.

:func:`build_report` reads the store (SQLAlchemy Core on the tables and the result views
``latest_predictions``, ``predictions_vs_truth`` and ``per_element_metrics``; portable SQL, so
DuckDB and PostgreSQL both work), draws PNG figures with matplotlib's Agg canvas (no pyplot, no
display, no global backend state) and writes ``<out>/index.html`` + ``<out>/figures/*.png``.

Sections
    summary          counts of structures / sites / spectra / models / predictions
    model map        periodic tables of the newest registered model per element, one panel per
                     task / input kind / edge, cells coloured by the held-out error (grey: no model)
    per element      MAE (forward, MNND) and accuracy (CN, neighbour) of the latest predictions with
                     a known truth, stored-spectrum and closed-loop inputs side by side; and as a table
    MNND parity      predicted vs true mean nearest-neighbour distance, coloured by element
    confusion        CN and dominant-neighbour class predictions vs the site labels
    forward overlays predicted vs reference spectrum for the best / median / worst forward cases

A section with nothing to show says so and names the command that fills it; the report never fails
on an empty or partly screened store.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from .errors import InputError
from .schema import models as models_t
from .schema import predictions as predictions_t
from .schema import sites as sites_t
from .schema import spectra as spectra_t
from .schema import structures as structures_t

__all__ = ["ELEMENTS", "ReportResult", "Section", "build_report", "parse_elements", "table_position"]

DPI = 110
FIG_DIR = "figures"

# fmt: off
ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr "
    "Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
# fmt: on
Z_OF = {s: i + 1 for i, s in enumerate(ELEMENTS)}

#: Views are not in schema.metadata (migrations create them from sql/views); light table clauses
#: let SQLAlchemy Core build the same portable SELECTs for both backends.
_PVT = sa.table(
    "predictions_vs_truth",
    *[sa.column(c) for c in (
        "prediction_id", "task", "element", "edge", "kind", "target", "closed_loop", "structure_id", "formula",
        "source_id", "site_id", "site_index", "spectrum_id", "model_id", "model_name", "arch", "value", "label",
        "uncertainty", "true_value", "true_label", "abs_error", "correct", "reference_spectrum_id",
        "reference_cosine",
    )],
)  # fmt: skip
_PEM = sa.table(
    "per_element_metrics",
    *[sa.column(c) for c in ("task", "element", "edge", "kind", "closed_loop", "n", "mae", "accuracy",
                             "period_accuracy", "mean_cosine", "model_name")],
)  # fmt: skip
_LP = sa.table("latest_predictions", *[sa.column(c) for c in ("task", "element", "closed_loop", "prediction_id")])

TASK_TITLE = {"forward": "forward (structure → spectrum)", "cn": "coordination number",
              "mnnd": "mean nearest-neighbour distance", "neighbor": "dominant neighbour"}  # fmt: skip


# ------------------------------------------------------------------------------------ results


@dataclass(kw_only=True)
class Section:
    """One block of the page: figures (paths relative to the page), extra HTML, or an empty-note."""

    key: str
    title: str
    intro: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)
    html: str = ""
    note: str | None = None  # shown instead of content when there is no data

    @property
    def empty(self) -> bool:
        return self.note is not None


@dataclass(kw_only=True)
class ReportResult:
    out_dir: Path
    index: Path
    figures: list[Path]
    sections: list[Section]
    counts: dict[str, int]

    @property
    def empty_sections(self) -> list[str]:
        return [s.key for s in self.sections if s.empty]


# ------------------------------------------------------------------------------------ helpers


def parse_elements(text: str | Sequence[str] | None) -> list[str] | None:
    """'Fe,Co' -> ['Fe', 'Co']; None/'' -> None (all elements). Unknown symbols are an InputError."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for raw in items:
        el = raw.strip()
        if not el:
            continue
        el = el[:1].upper() + el[1:].lower()
        if el not in Z_OF:
            raise InputError("--elements", f"{raw.strip()!r} is not an element symbol", "use symbols like Fe,Co")
        if el not in out:
            out.append(el)
    return out or None


def table_position(symbol: str) -> tuple[int, int]:
    """(row, column), 0-based, in an 18-column periodic table with the f block as two rows below a gap
    (rows 8 and 9; La and Ac start them, so group 3 of periods 6/7 stays empty)."""
    z = Z_OF[symbol]
    if z == 1:
        return 0, 0
    if z == 2:
        return 0, 17
    for period, (start, end) in enumerate(((3, 10), (11, 18)), start=1):
        if start <= z <= end:
            i = z - start
            return period, i if i < 2 else i + 10
    for period, start in ((3, 19), (4, 37)):
        if start <= z < start + 18:
            return period, z - start
    for period, start, f_row in ((5, 55, 8), (6, 87, 9)):
        if start <= z < start + 32:
            i = z - start
            if i < 2:
                return period, i
            if i < 17:  # La..Lu / Ac..Lr
                return f_row, i + 1
            return period, i - 14
    raise ValueError(symbol)


def _z(el: str | None) -> int:
    return Z_OF.get(el or "", 999)


def _json(v: Any) -> Any:
    # some drivers hand JSON columns back as text
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    return v


def _num(v: Any) -> float | None:
    """A metric value as float: plain numbers, [mean, std] lists and {"mean": ...} dicts; NaN -> None."""
    if isinstance(v, dict):
        v = v.get("mean")
    elif isinstance(v, (list, tuple)):
        v = v[0] if v else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v: Any, digits: int = 3) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.{digits}g}" if abs(f) >= 1e-3 or f == 0 else f"{f:.2e}"


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _where_elements(q, col, elements: Sequence[str] | None):
    return q if not elements else q.where(col.in_(list(elements)))


def _rows(conn: sa.Connection, q) -> list[dict]:
    return [dict(r) for r in conn.execute(q).mappings()]


def _r2(y: np.ndarray, p: np.ndarray) -> float | None:
    if len(y) < 2:
        return None
    ss = float(np.sum((y - y.mean()) ** 2))
    return None if ss <= 0 else 1.0 - float(np.sum((p - y) ** 2)) / ss


def _element_colors(elements: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    ordered = sorted(set(elements), key=_z)
    cmap = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"]
    return {el: cmap(i % cmap.N) for i, el in enumerate(ordered)}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _screen_hint(elements: Sequence[str], extra: str = "") -> str:
    return f"xastruct screen --elements {','.join(elements)}{extra}"


# ------------------------------------------------------------------------------------ sections


def _summary(conn: sa.Connection, elements: Sequence[str] | None) -> tuple[Section, dict[str, int]]:
    def count(q) -> int:
        return int(conn.execute(q).scalar() or 0)

    totals = {
        "structures": count(sa.select(sa.func.count()).select_from(structures_t)),
        "sites": count(sa.select(sa.func.count()).select_from(sites_t)),
        "spectra": count(sa.select(sa.func.count()).select_from(spectra_t)),
        "models": count(sa.select(sa.func.count()).select_from(models_t)),
        "predictions": count(sa.select(sa.func.count()).select_from(predictions_t)),
    }
    filtered = None
    if elements:
        els = list(elements)
        filtered = {
            "structures": count(sa.select(sa.func.count(sa.distinct(sites_t.c.structure_id)))
                                .where(sites_t.c.element.in_(els))),
            "sites": count(sa.select(sa.func.count()).select_from(sites_t).where(sites_t.c.element.in_(els))),
            "spectra": count(sa.select(sa.func.count()).select_from(spectra_t).where(spectra_t.c.absorber.in_(els))),
            # universal models (element NULL) serve every element
            "models": count(sa.select(sa.func.count()).select_from(models_t)
                            .where(sa.or_(models_t.c.element.in_(els), models_t.c.element.is_(None)))),
            "predictions": count(sa.select(sa.func.count()).select_from(predictions_t)
                                 .where(predictions_t.c.element.in_(els))),
        }  # fmt: skip
    labels = {
        "structures": "structures", "sites": "absorbing sites (labelled)", "spectra": "spectra",
        "models": "registered models", "predictions": "predictions (all model versions)",
    }  # fmt: skip
    head = "<tr><th>what</th><th>in the store</th>" + (
        f"<th>for {_esc(', '.join(elements))}</th>" if filtered else "") + "</tr>"
    body = "".join(
        f"<tr><td>{labels[k]}</td><td class='num'>{v:,}</td>"
        + (f"<td class='num'>{filtered[k]:,}</td>" if filtered else "") + "</tr>"
        for k, v in totals.items()
    )  # fmt: skip
    # latest predictions by task: what the model-quality sections below are drawn from
    q = sa.select(_LP.c.task, _LP.c.closed_loop, sa.func.count().label("n")).group_by(_LP.c.task, _LP.c.closed_loop)
    lp = _rows(conn, _where_elements(q, _LP.c.element, elements))
    q = sa.select(_PVT.c.task, _PVT.c.closed_loop, sa.func.count().label("n")).group_by(_PVT.c.task, _PVT.c.closed_loop)
    pv = {(r["task"], bool(r["closed_loop"])): r["n"] for r in _rows(conn, _where_elements(q, _PVT.c.element, elements))}
    extra = ""
    if lp:
        lines = "".join(
            f"<tr><td>{_esc(r['task'])}</td><td>{'closed loop (predicted spectra)' if r['closed_loop'] else 'direct'}"
            f"</td><td class='num'>{int(r['n']):,}</td><td class='num'>{int(pv.get((r['task'], bool(r['closed_loop'])), 0)):,}</td></tr>"
            for r in sorted(lp, key=lambda r: (r["task"], bool(r["closed_loop"])))
        )  # fmt: skip
        extra = ("<h3>Latest predictions by task</h3><table class='data'><tr><th>task</th><th>input</th>"
                 "<th>latest predictions</th><th>with known truth</th></tr>" + lines + "</table>")  # fmt: skip
    sec = Section(key="summary", title="Store summary",
                  html=f"<table class='data'>{head}{body}</table>{extra}")  # fmt: skip
    return sec, (filtered or totals)


# -- model map ------------------------------------------------------------------------------------


def _model_cells(rows: list[dict], elements: Sequence[str] | None) -> dict[tuple, dict[str, dict]]:
    """(task, kind, edge) -> element -> cell {error, model, arch, n}: the newest model per element.

    Forward models: test-split MAE (mean over seeds). Inverse models: the test metrics of the
    element's own group (``El`` or ``El:edge``), else the overall ones; a universal model (element
    NULL) contributes one cell per element group it was evaluated on."""
    panels: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: r["id"]):  # later (newer) rows overwrite older ones
        metrics = _json(r.get("metrics")) or {}
        config = _json(r.get("config")) or {}
        task, kind = r["task"], r.get("kind") or "any"
        entries: list[tuple[str, str | None, float | None, Any]] = []
        if task == "forward":
            test = (metrics.get("summary") or {}).get("test") or {}
            err = _num(test.get("mae"))
            if err is None:
                err = _num(((metrics.get("ensemble") or {}).get("test") or {}).get("mae"))
            if r.get("element"):
                entries.append((r["element"], r.get("edge"), err, test.get("n")))
            for pair, g in (metrics.get("per_pair") or {}).items():  # a model over several absorbers
                el, _, edge = pair.partition(":")
                if el in Z_OF and g.get("n_test"):
                    entries.append((el, edge, _num((g.get("test") or {}).get("mae")), g.get("n_test")))
        else:
            test = metrics.get("test") or {}
            metric = "mae" if task == "mnnd" else "accuracy"

            def err_of(g: dict) -> float | None:
                v = _num((g or {}).get(metric))
                return v if v is None or task == "mnnd" else 1.0 - v

            if r.get("element"):
                el, edge = r["element"], r.get("edge")
                g = test.get(el) or test.get(f"{el}:{edge}") or test.get("overall") or {}
                entries.append((el, edge, err_of(g), g.get("n")))
            else:
                edges = config.get("edges") or []
                for key, g in test.items():
                    if key == "overall":
                        continue
                    el, _, edge = key.partition(":")
                    edge = edge or r.get("edge") or (edges[0] if len(edges) == 1 else None)
                    if el in Z_OF:
                        entries.append((el, edge, err_of(g), g.get("n") if isinstance(g, dict) else None))
        for el, edge, err, n in entries:
            if elements and el not in elements:
                continue
            panels[(task, kind, edge or "all edges")][el] = {"error": err, "model": r["name"], "arch": r["arch"], "n": n}
    return panels


_TASK_ORDER = {"forward": 0, "cn": 1, "neighbor": 2, "mnnd": 3}


def _error_label(task: str, kind: str) -> str:
    if task == "forward":
        return "held-out MAE of k²χ(k) (Å⁻²)" if kind == "EXAFS" else "held-out MAE of normalized μ(E)"
    if task == "mnnd":
        return "held-out MNND MAE (Å)"
    return "held-out error rate (1 − accuracy)"


def _model_map(conn: sa.Connection, out: Path, elements: Sequence[str] | None) -> Section:
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    rows = _rows(conn, sa.select(models_t.c.id, models_t.c.name, models_t.c.task, models_t.c.element,
                                 models_t.c.edge, models_t.c.kind, models_t.c.arch, models_t.c.metrics,
                                 models_t.c.config))  # fmt: skip
    sec = Section(
        key="model_map", title="Models per element",
        intro="Newest registered model for each absorbing element, one periodic table per task, input kind and "
              "edge (like Figure S14 of the XAStruct paper). Cell colour: held-out error on materials the "
              "model never saw (forward: MAE of the predicted spectrum; MNND: MAE in Å; CN and neighbour: "
              "misclassification rate); hatched: model without a recorded metric; grey: no model.",
    )  # fmt: skip
    panels = _model_cells(rows, elements)
    if not panels:
        what = f" for {', '.join(elements)}" if elements else ""
        sec.note = (f"No models registered{what} yet — run `xastruct train forward --element "
                    f"{(elements or ['Cu'])[0]}` or `xastruct train inverse --task cn` (or `xastruct ingest builtin`).")  # fmt: skip
        return sec
    cmap = matplotlib.colormaps["RdYlGn_r"]  # green = small error, red = large
    for (task, kind, edge), cells in sorted(panels.items(), key=lambda kv: (_TASK_ORDER.get(kv[0][0], 9), kv[0][1:])):
        # fixed axes instead of a layout engine: ~200 texts make constrained layout the slow part
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11.0, 6.2), dpi=DPI)
        ax = fig.add_axes((0.01, 0.01, 0.86, 0.86))
        cax = fig.add_axes((0.89, 0.12, 0.016, 0.62))
        errs = [c["error"] for c in cells.values() if c["error"] is not None]
        lo, hi = (min(errs), max(errs)) if errs else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * abs(lo or 1) * 0.1, hi + 0.5 * abs(hi or 1) * 0.1
        norm = Normalize(vmin=lo, vmax=hi)
        boxes, faces, edges = [], [], []
        for sym in ELEMENTS[:103]:
            r, c = table_position(sym)
            cell = cells.get(sym)
            y = -r
            if cell is None:
                boxes.append(Rectangle((c, y), 0.94, 0.94))
                faces.append("#e6e6e6")
                edges.append("white")
                ax.text(c + 0.47, y + 0.5, sym, ha="center", va="center", fontsize=7, color="#9a9a9a")
            elif cell["error"] is None:
                ax.add_patch(Rectangle((c, y), 0.94, 0.94, facecolor="#cfe3f5", edgecolor="#3b6ea5", hatch="///"))
                ax.text(c + 0.47, y + 0.5, sym, ha="center", va="center", fontsize=8, weight="bold")
            else:
                boxes.append(Rectangle((c, y), 0.94, 0.94))
                faces.append(cmap(norm(cell["error"])))
                edges.append("black")
                ax.text(c + 0.47, y + 0.62, sym, ha="center", va="center", fontsize=8.5, weight="bold")
                ax.text(c + 0.47, y + 0.25, _fmt(cell["error"], 2), ha="center", va="center", fontsize=6)
        ax.add_collection(PatchCollection(boxes, facecolors=faces, edgecolors=edges, linewidths=0.6))
        ax.text(2.5, -7.53, "La–Lu →", ha="center", va="center", fontsize=7, color="#666")
        ax.text(2.5, -8.53, "Ac–Lr →", ha="center", va="center", fontsize=7, color="#666")
        ax.set_xlim(-0.1, 18.0)
        ax.set_ylim(-9.1, 1.0)
        ax.set_aspect("equal")
        ax.axis("off")
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label(_error_label(task, kind))
        archs = sorted({c["arch"] for c in cells.values()})
        kind_txt = f"{kind} spectra" if task == "forward" else f"input: {kind}"
        ax.set_title(f"{TASK_TITLE.get(task, task)} — {kind_txt}, {edge} edge\n"
                     f"{len(cells)} element(s) with a model; arch: {', '.join(archs)}", fontsize=11)  # fmt: skip
        name = f"model_map_{task}_{kind}_{edge}".replace("+", "_").replace(" ", "_").lower() + ".png"
        _save(fig, out / FIG_DIR / name)
        sec.figures.append((f"{FIG_DIR}/{name}", f"{task} models, {kind}, {edge} edge"))
    return sec


# -- per-element errors -------------------------------------------------------------------------------

_PANELS = [  # (title, task, kinds or None = any, metric, y label)
    ("forward XANES: predicted vs stored spectrum", "forward", ("XANES",), "mae", "MAE of normalized μ(E)"),
    ("forward EXAFS: predicted vs stored spectrum", "forward", ("EXAFS",), "mae", "MAE of k²χ(k) (Å⁻²)"),
    ("MNND", "mnnd", None, "mae", "MAE (Å)"),
    ("coordination number", "cn", None, "accuracy", "accuracy"),
    ("dominant neighbour", "neighbor", None, "accuracy", "accuracy"),
    ("dominant neighbour's period", "neighbor", None, "period_accuracy", "accuracy"),
]


def _per_element(conn: sa.Connection, out: Path, elements: Sequence[str] | None, hint_els: Sequence[str]) -> Section:
    rows = _rows(conn, _where_elements(sa.select(_PEM), _PEM.c.element, elements))
    sec = Section(
        key="per_element", title="Errors per element",
        intro="Latest predictions whose truth is known (the site's own labels; for forward predictions the "
              "stored spectrum of the same site). <b>direct</b>: inverse models on stored spectra, forward models "
              "on structures; <b>closed loop</b>: inverse models on forward-predicted spectra. Numbers on the "
              "bars: how many predictions each bar averages.",
    )  # fmt: skip
    if not rows:
        sec.note = ("No predictions with a known truth yet — run "
                    f"`{_screen_hint(hint_els, ' --closed-loop')}` (needs trained models and labelled sites).")  # fmt: skip
        return sec
    panels = []
    for title, task, kinds, metric, ylabel in _PANELS:
        sel = [r for r in rows if r["task"] == task and (kinds is None or r["kind"] in kinds) and _num(r[metric]) is not None]
        if sel:
            panels.append((title, task, metric, ylabel, sel))
    if panels:
        n_bars = max(len({(r["element"], r["edge"], r["kind"], bool(r["closed_loop"])) for r in p[4]}) for p in panels)
        fig = _figure(max(6.5, min(18.0, 1.5 + 0.35 * n_bars)), 2.9 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (title, task, metric, ylabel, sel) in zip(axes, panels):
            edges = {r["edge"] for r in sel}
            cats = sorted({(r["element"], r["edge"]) for r in sel}, key=lambda t: (_z(t[0]), str(t[1])))
            # one bar per input (direct / closed loop) x input kind, side by side for each element
            series = sorted({(bool(r["closed_loop"]), r["kind"]) for r in sel}, key=lambda t: (t[0], str(t[1])))
            x = np.arange(len(cats))
            width = 0.8 / len(series)
            blues, oranges = ["#3b6ea5", "#7fa7d6", "#1f3f66"], ["#e08a2c", "#f2bd7f", "#9c5410"]
            for j, (closed, kind) in enumerate(series):
                shades = oranges if closed else blues
                color = shades[sum(1 for c, _ in series[:j] if c == closed) % len(shades)]
                lab = ("closed loop" if closed else "direct") + (f", {kind} input" if task != "forward" else "")
                vals, ns = [], []
                for cat in cats:
                    m = [r for r in sel if (r["element"], r["edge"]) == cat and (bool(r["closed_loop"]), r["kind"]) == (closed, kind)]
                    vals.append(_num(m[0][metric]) if m else np.nan)
                    ns.append(int(m[0]["n"]) if m else 0)
                off = (j - (len(series) - 1) / 2) * width
                bars = ax.bar(x + off, vals, width, color=color, hatch="//" if closed else None, edgecolor="black",
                              linewidth=0.4, label=lab)  # fmt: skip
                for b, n, v in zip(bars, ns, vals):
                    if n and not np.isnan(v):
                        ax.annotate(str(n), (b.get_x() + b.get_width() / 2, v), xytext=(0, 2),
                                    textcoords="offset points", ha="center", va="bottom", fontsize=7)  # fmt: skip
            labels = [str(el) + (f" {edge}" if len(edges) > 1 else "") for el, edge in cats]
            ax.set_xlim(-0.6, len(cats) - 0.4)
            ax.set_xticks(x, labels, rotation=90 if len(cats) > 25 else 0, fontsize=8)
            ax.set_ylabel(ylabel)
            if metric in ("accuracy", "period_accuracy"):
                ax.set_ylim(0, 1.12)
            else:
                ax.set_ylim(0, np.nanmax([_num(r[metric]) for r in sel]) * 1.2 or 1.0)
            ax.set_title(f"{title} — " + ("accuracy (higher is better)" if metric != "mae" else "mean absolute error"),
                         fontsize=10)  # fmt: skip
            ax.legend(fontsize=8, loc="upper right")
            ax.grid(axis="y", alpha=0.3)
        axes[-1].set_xlabel("absorbing element")
        _save(fig, out / FIG_DIR / "per_element_errors.png")
        sec.figures.append((f"{FIG_DIR}/per_element_errors.png", "error per element and task"))
    unit = {"mnnd": " Å", "cn": "", "neighbor": ""}
    body = []
    for r in sorted(rows, key=lambda r: (_TASK_ORDER.get(r["task"], 9), _z(r["element"]), str(r["edge"]),
                                         str(r["kind"]), bool(r["closed_loop"]))):  # fmt: skip
        mae_unit = unit.get(r["task"], " (k²χ, Å⁻²)" if r["kind"] == "EXAFS" else " (norm. μ)")
        mae = "–" if _num(r["mae"]) is None else _fmt(r["mae"]) + mae_unit
        body.append(
            f"<tr><td>{_esc(r['task'])}</td><td>{_esc(r['element'])}</td><td>{_esc(r['edge'])}</td>"
            f"<td>{_esc(r['kind'])}</td><td>{'closed loop' if r['closed_loop'] else 'direct'}</td>"
            f"<td class='num'>{int(r['n'])}</td><td class='num'>{mae}</td><td class='num'>{_fmt(r['accuracy'])}</td>"
            f"<td class='num'>{_fmt(r['period_accuracy'])}</td>"
            f"<td class='num'>{_fmt(r['mean_cosine'], 4)}</td><td>{_esc(r['model_name'])}</td></tr>"
        )
    sec.html = ("<table class='data' id='per-element-table'><tr><th>task</th><th>element</th><th>edge</th>"
                "<th>kind</th><th>input</th><th>n</th><th>MAE</th><th>accuracy</th><th>neighbour period accuracy</th>"
                "<th>mean cosine</th>"
                "<th>model</th></tr>" + "".join(body) + "</table>")  # fmt: skip
    return sec


# -- MNND parity ---------------------------------------------------------------------------------------


def _parity(conn: sa.Connection, out: Path, elements: Sequence[str] | None, hint_els: Sequence[str]) -> Section:
    from matplotlib.lines import Line2D

    q = sa.select(_PVT.c.element, _PVT.c.value, _PVT.c.true_value, _PVT.c.uncertainty, _PVT.c.closed_loop).where(
        _PVT.c.task == "mnnd", _PVT.c.value.is_not(None))
    rows = _rows(conn, _where_elements(q, _PVT.c.element, elements))
    sec = Section(
        key="parity", title="MNND: predicted vs true",
        intro="Mean nearest-neighbour distance predicted from spectra against the site's own label. Filled circles: "
              "spectra stored in the store; open triangles: closed loop (the structure's forward-predicted "
              "spectrum fed to the inverse model). Bars: the model's ±1σ uncertainty.",
    )  # fmt: skip
    if not rows:
        sec.note = f"No MNND predictions with a known truth yet — run `{_screen_hint(hint_els, ' --task inverse')}`."
        return sec
    colors = _element_colors([r["element"] for r in rows])
    fig = _figure(7.2, 6.0)
    ax = fig.add_subplot()
    y_all = np.array([r["true_value"] for r in rows], float)
    p_all = np.array([r["value"] for r in rows], float)
    lo = float(min(y_all.min(), p_all.min()))
    hi = float(max(y_all.max(), p_all.max()))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.4", lw=1, zorder=1)
    alpha = 0.85 if len(rows) < 500 else 0.35
    size = 28 if len(rows) < 500 else 8
    stats_handles = []
    for closed, marker in ((False, "o"), (True, "^")):
        sel = [r for r in rows if bool(r["closed_loop"]) == closed]
        if not sel:
            continue
        y = np.array([r["true_value"] for r in sel], float)
        p = np.array([r["value"] for r in sel], float)
        u = np.array([np.nan if r["uncertainty"] is None else r["uncertainty"] for r in sel], float)
        ok = np.isfinite(u)
        if ok.any():
            ax.errorbar(y[ok], p[ok], yerr=u[ok], fmt="none", ecolor="0.6", elinewidth=0.6, alpha=0.5, zorder=2)
        cols = [colors[r["element"]] for r in sel]
        if closed:
            ax.scatter(y, p, s=size * 1.3, marker=marker, facecolors="none", edgecolors=cols, linewidths=1.1,
                       alpha=alpha, zorder=3)  # fmt: skip
        else:
            ax.scatter(y, p, s=size, marker=marker, c=cols, edgecolors="black", linewidths=0.3, alpha=alpha, zorder=3)
        mae = float(np.mean(np.abs(p - y)))
        r2 = _r2(y, p)
        what = "closed loop" if closed else "stored spectra"
        stats_handles.append(Line2D([], [], ls="none", marker=marker, color="black",
                                    markerfacecolor="none" if closed else "0.3",
                                    label=f"{what}: n={len(sel)}, MAE={mae:.3f} Å, "
                                          f"R²={'n/a' if r2 is None else f'{r2:.3f}'}"))  # fmt: skip
    el_handles = [Line2D([], [], ls="none", marker="s", color=c, label=el) for el, c in colors.items()][:20]
    leg1 = ax.legend(handles=stats_handles, loc="upper left", fontsize=8, title="input", title_fontsize=8)
    ax.add_artist(leg1)
    ax.legend(handles=el_handles, loc="lower right", fontsize=8, title="absorber", title_fontsize=8,
              ncol=1 if len(el_handles) <= 8 else 2)  # fmt: skip
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true MNND (Å, site label)")
    ax.set_ylabel("predicted MNND (Å)")
    ax.set_title("Mean nearest-neighbour distance: predicted vs true")
    ax.grid(alpha=0.3)
    _save(fig, out / FIG_DIR / "parity_mnnd.png")
    sec.figures.append((f"{FIG_DIR}/parity_mnnd.png", "MNND parity"))
    return sec


# -- confusion matrices ---------------------------------------------------------------------------------


def _class_order(task: str, true: Sequence[str], pred: Sequence[str], *, cap: int = 18) -> tuple[list[str], Callable]:
    freq = Counter(true) + Counter(pred)
    if task == "cn":
        def key(c):
            return (0, float(c), c) if c.replace(".", "", 1).isdigit() else (1, 0.0, c)
        classes = sorted(freq, key=key)
    else:
        classes = sorted(freq, key=lambda c: (-Counter(true)[c], -freq[c], c))
    if len(classes) <= cap:
        return classes, lambda c: c
    keep = set(sorted(freq, key=lambda c: -freq[c])[: cap - 1])
    classes = [c for c in classes if c in keep] + ["(rest)"]
    return classes, lambda c: c if c in keep else "(rest)"


def _confusion(conn: sa.Connection, out: Path, elements: Sequence[str] | None, hint_els: Sequence[str]) -> Section:
    import matplotlib

    q = sa.select(_PVT.c.task, _PVT.c.label, _PVT.c.true_label, _PVT.c.closed_loop).where(
        _PVT.c.task.in_(["cn", "neighbor"]), _PVT.c.label.is_not(None), _PVT.c.true_label.is_not(None))
    rows = _rows(conn, _where_elements(q, _PVT.c.element, elements))
    sec = Section(
        key="confusion", title="CN and neighbour type: confusion matrices",
        intro="Rows: the site's label; columns: the predicted class. Numbers are counts; colour is the fraction "
              "of each true class (row) predicted as each column, so the diagonal is the per-class recall.",
    )  # fmt: skip
    notes = []
    cmap = matplotlib.colormaps["Blues"]
    for task, what in (("cn", "coordination number"), ("neighbor", "dominant neighbour")):
        sel = [r for r in rows if r["task"] == task]
        if not sel:
            notes.append(f"No {what} predictions with a known truth yet — run "
                         f"`{_screen_hint(hint_els, ' --task inverse')}`.")  # fmt: skip
            continue
        groups = [(False, "stored spectra"), (True, "closed loop (predicted spectra)")]
        groups = [(c, t) for c, t in groups if any(bool(r["closed_loop"]) == c for r in sel)]
        classes, mapc = _class_order(task, [str(r["true_label"]) for r in sel], [str(r["label"]) for r in sel])
        k = len(classes)
        side = max(3.6, 0.45 * k + 1.8)
        fig = _figure(side * len(groups) + 0.8, side)
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        for ax, (closed, title) in zip(axes, groups):
            part = [r for r in sel if bool(r["closed_loop"]) == closed]
            idx = {c: i for i, c in enumerate(classes)}
            mat = np.zeros((k, k), int)
            for r in part:
                mat[idx[mapc(str(r["true_label"]))], idx[mapc(str(r["label"]))]] += 1
            frac = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
            im = ax.imshow(frac, cmap=cmap, vmin=0, vmax=1)
            if k <= 20:
                for i in range(k):
                    for j in range(k):
                        if mat[i, j]:
                            ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=8,
                                    color="white" if frac[i, j] > 0.55 else "black")  # fmt: skip
            ax.set_xticks(range(k), classes, rotation=90 if k > 10 else 0, fontsize=8)
            ax.set_yticks(range(k), classes, fontsize=8)
            label = "CN" if task == "cn" else "neighbour"
            ax.set_xlabel(f"predicted {label}")
            ax.set_ylabel(f"true {label} (site label)")
            acc = float(np.trace(mat)) / max(mat.sum(), 1)
            ax.set_title(f"{what}: {title}\nn={mat.sum()}, accuracy={acc:.3f}", fontsize=10)
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="fraction of true class")
        name = f"confusion_{task}.png"
        _save(fig, out / FIG_DIR / name)
        sec.figures.append((f"{FIG_DIR}/{name}", f"{what} confusion matrix"))
    if notes and not sec.figures:
        sec.note = " ".join(notes)
    elif notes:
        sec.html = "".join(f"<p class='note'>{_esc(n)}</p>" for n in notes)
    return sec


# -- forward overlays --------------------------------------------------------------------------------


def _overlays(conn: sa.Connection, out: Path, elements: Sequence[str] | None, hint_els: Sequence[str]) -> Section:
    q = sa.select(_PVT.c.prediction_id, _PVT.c.element, _PVT.c.edge, _PVT.c.kind, _PVT.c.formula, _PVT.c.source_id,
                  _PVT.c.structure_id, _PVT.c.site_index, _PVT.c.abs_error, _PVT.c.reference_cosine, _PVT.c.reference_spectrum_id,
                  _PVT.c.model_id, _PVT.c.arch, _PVT.c.uncertainty).where(
        _PVT.c.task == "forward", _PVT.c.abs_error.is_not(None))  # fmt: skip
    rows = _rows(conn, _where_elements(q, _PVT.c.element, elements))
    sec = Section(
        key="overlays", title="Forward predictions vs stored spectra",
        intro="Predicted site spectra (ensemble mean; band: ± the mean calibrated sigma -- the spread across seed "
              "members times the model's band_scale, fitted on its validation materials) against the "
              "stored spectrum of the same site, resampled to the model's grid, for the best, median and worst "
              "case by MAE.",
    )  # fmt: skip
    if not rows:
        sec.note = ("No forward predictions with a stored reference spectrum yet — run "
                    f"`{_screen_hint(hint_els, ' --task forward')}`.")  # fmt: skip
        return sec
    from .train import grid_points, grid_spec, resample  # imports torch: only when there is something to draw

    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"] or "XANES"].append(r)
    for kind in sorted(by_kind):
        ranked = sorted(by_kind[kind], key=lambda r: (r["abs_error"], r["prediction_id"]))
        n = len(ranked)
        picks = []
        for tag, i in (("best", 0), ("median", (n - 1) // 2), ("worst", n - 1)):
            if all(i != j for _, j in picks):
                picks.append((tag, i))
        chosen = [(tag, ranked[i]) for tag, i in picks]
        pids = [r["prediction_id"] for _, r in chosen]
        preds = {r["id"]: r for r in _rows(conn, sa.select(predictions_t.c.id, predictions_t.c.energies,
                                                           predictions_t.c.mu).where(predictions_t.c.id.in_(pids)))}
        refs = {r["id"]: r for r in _rows(conn, sa.select(
            spectra_t.c.id, spectra_t.c.energies, spectra_t.c.mu, spectra_t.c.e0, spectra_t.c.k, spectra_t.c.chi,
            spectra_t.c.source).where(spectra_t.c.id.in_([r["reference_spectrum_id"] for _, r in chosen])))}
        grids = {r["id"]: _json(r["grid"]) for r in _rows(conn, sa.select(models_t.c.id, models_t.c.grid).where(
            models_t.c.id.in_([r["model_id"] for _, r in chosen])))}  # fmt: skip
        fig = _figure(4.3 * len(chosen) + 0.4, 3.9)
        axes = fig.subplots(1, len(chosen), squeeze=False)[0]
        for ax, (tag, r) in zip(axes, chosen):
            p = preds.get(r["prediction_id"]) or {}
            x = np.asarray(p.get("energies") or [], float)
            y = np.asarray(p.get("mu") or [], float)
            grid = grids.get(r["model_id"])
            if not (isinstance(grid, dict) and "quantity" in grid and "n" in grid):
                try:
                    grid = grid_spec(r["element"], r["edge"], kind)
                except InputError:
                    grid = None
            ref = refs.get(r["reference_spectrum_id"])
            ref_y = None
            if ref is not None and grid is not None:
                ref_y = resample(grid, energies=ref["energies"], mu=ref["mu"], e0=ref["e0"], k=ref["k"], chi=ref["chi"])
                if ref_y is not None and len(x) and len(ref_y) != len(x):
                    ref_y = np.interp(x, grid_points(grid), ref_y)
            if len(x) and len(x) == len(y):
                unc = r["uncertainty"]
                if unc is not None and math.isfinite(unc) and unc > 0:
                    ax.fill_between(x, y - unc, y + unc, color="#e08a2c", alpha=0.25, lw=0)
                ax.plot(x, y, color="#d0641c", lw=1.6, label=f"predicted ({r['arch']})")
            if ref_y is not None and len(x):
                ax.plot(x, ref_y, color="black", lw=1.2, ls="--",
                        label=f"stored ({ref['source']}, spectrum {r['reference_spectrum_id']})")  # fmt: skip
            elif ref is None:
                ax.text(0.5, 0.05, "reference spectrum not found", transform=ax.transAxes, ha="center", fontsize=8)
            if kind == "EXAFS":
                ax.set_xlabel("k (Å⁻¹)")
                ax.set_ylabel("k²χ(k) (Å⁻²)")
            else:
                ax.set_xlabel("E − E₀ (eV)")
                ax.set_ylabel("normalized μ(E)")
            who = f"{r['formula'] or '?'} ({r['source_id'] or 'structure ' + str(r.get('structure_id', ''))})"
            cos = "" if r["reference_cosine"] is None else f", cosine {r['reference_cosine']:.3f}"
            ax.set_title(f"{tag}: {r['element']} {r['edge']} in {who}, site {r['site_index']}\n"
                         f"MAE {r['abs_error']:.3g}{cos}", fontsize=9)  # fmt: skip
            ax.legend(fontsize=7, loc="best")
            ax.grid(alpha=0.3)
        fig.suptitle(f"Forward {kind}: best / median / worst of {n} site(s) with a stored spectrum", fontsize=11)
        name = f"forward_overlays_{kind.lower().replace('+', '_')}.png"
        _save(fig, out / FIG_DIR / name)
        sec.figures.append((f"{FIG_DIR}/{name}", f"forward {kind}: best / median / worst"))
    return sec


# ------------------------------------------------------------------------------------------ page

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
     color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em} nav a{margin-right:1em}
table.data{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.data td,table.data th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
table.data th{background:#f4f4f4} table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em}
code{background:#f4f4f4;padding:0 .25em}
#render-check{color:#888;font-size:.8em}
"""

# Writes into the page how many figures the browser actually decoded: a reader sees broken figures
# at a glance (e.g. index.html copied without figures/), and tests read it from the DOM.
_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure img'), ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var el = document.getElementById('render-check');
  el.setAttribute('data-loaded', ok); el.setAttribute('data-total', imgs.length);
  el.textContent = ok + ' of ' + imgs.length + ' figures displayed';
});
</script>
"""


def _md_code(text: str) -> str:
    """`code` spans of a note -> <code> (the notes name commands to run)."""
    parts = _esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _render(sections: list[Section], *, title: str, meta: str) -> str:
    nav = " ".join(f"<a href='#{s.key}'>{_esc(s.title)}</a>" for s in sections)
    body = []
    for s in sections:
        parts = [f"<section id='{s.key}' data-section='{s.key}' data-empty='{str(s.empty).lower()}'>",
                 f"<h2>{_esc(s.title)}</h2>"]
        if s.intro:
            parts.append(f"<p>{s.intro}</p>")
        if s.note:
            parts.append(f"<p class='note no-data'>{_md_code(s.note)}</p>")
        for src, cap in s.figures:
            parts.append(f"<figure><img src='{_esc(src)}' alt='{_esc(cap)}' loading='eager'>"
                         f"<figcaption>{_esc(cap)}</figcaption></figure>")  # fmt: skip
        if s.html:
            parts.append(s.html)
        parts.append("</section>")
        body.append("\n".join(parts))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='generator' content='xastruct report'><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n<p class='meta'>{meta}</p>\n"
        f"<nav>{nav}</nav>\n" + "\n".join(body)
        + "\n<p id='render-check' data-loaded='' data-total=''>figures not checked (JavaScript off)</p>\n"
        + _SCRIPT + "</body></html>\n"
    )


def _owned_figure(name: str) -> bool:
    return name.endswith(".png") and name.startswith(
        ("model_map_", "per_element_errors", "parity_mnnd", "confusion_", "forward_overlays_"))


def build_report(
    engine: sa.Engine,
    *,
    out_dir: str | Path,
    elements: Sequence[str] | None = None,
    progress_factory: Callable | None = None,
) -> ReportResult:
    """Write ``out_dir/index.html`` and ``out_dir/figures/*.png`` from what the store holds.

    *elements* restricts every section to those absorbers (None: all). *progress_factory*: a
    ``(total, label)`` context manager yielding ``advance()`` (the CLI's progress bar), advanced
    once per figure step."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(str(out), "exists and is not a directory", "pass a directory path to --out")
    try:
        (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(str(out), f"cannot create the report directory: {exc.strerror or exc}",
                         "choose a writable --out directory") from None  # fmt: skip
    els = parse_elements(elements) if elements else None
    # figures of an earlier report that this run may not redraw (e.g. a section now empty)
    for p in (out / FIG_DIR).iterdir():
        if _owned_figure(p.name):
            p.unlink()
    with engine.connect() as conn:
        hint_els = els or [r[0] for r in conn.execute(
            sa.select(sites_t.c.element).group_by(sites_t.c.element).order_by(sa.func.count().desc()).limit(3))] \
            or ["Fe", "Co"]  # fmt: skip
        steps: list[tuple[str, Callable[[], Section]]] = [
            ("model map", lambda: _model_map(conn, out, els)),
            ("per-element errors", lambda: _per_element(conn, out, els, hint_els)),
            ("MNND parity", lambda: _parity(conn, out, els, hint_els)),
            ("confusion matrices", lambda: _confusion(conn, out, els, hint_els)),
            ("forward overlays", lambda: _overlays(conn, out, els, hint_els)),
        ]
        summary, counts = _summary(conn, els)
        sections = [summary]
        ctx = progress_factory(len(steps), "report figures") if progress_factory else nullcontext(lambda n=1: None)
        with ctx as advance:
            for _label, step in steps:
                sections.append(step())
                advance(1)
    url = engine.url.render_as_string(hide_password=True)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = (f"store <code>{_esc(url)}</code> · generated {_esc(now)} · absorbers: "
            f"{_esc(', '.join(els)) if els else 'all'}")  # fmt: skip
    title = "XAStruct report" + (f": {', '.join(els)}" if els else "")
    index = out / "index.html"
    index.write_text(_render(sections, title=title, meta=meta), encoding="utf-8")
    figures = [out / src for s in sections for src, _ in s.figures]
    return ReportResult(out_dir=out, index=index, figures=figures, sections=sections, counts=counts)
