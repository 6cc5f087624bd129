"""`xastruct report`: the HTML page and its figures on a tiny store with synthetic predictions, on an
empty store, through the real CLI, and rendered in headless Chromium.

The store holds a few real (pymatgen) structures with labelled sites and stored spectra; models and
predictions rows are written the way `xastruct screen` writes them (see xastruct/screen.py): forward
rows on the model grid with reference MAE/cosine, inverse rows on stored spectra, closed-loop rows
pointing at a forward prediction.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from xastruct import inverse as inv
from xastruct import report as rep
from xastruct import store
from xastruct.cli import main
from xastruct.errors import InputError

XANES_GRID = {"quantity": "mu_norm", "axis": "E-E0", "unit": "eV", "start": -3.5, "stop": 66.5, "step": 0.5,
              "max_extrapolate": 1.0, "n": 141}  # fmt: skip
EXAFS_GRID = {"quantity": "k2chi", "axis": "k", "unit": "1/A", "start": 2.0, "stop": 12.0, "step": 0.05,
              "max_extrapolate": 0.5, "n": 201}  # fmt: skip
SECTIONS = ["summary", "model_map", "per_element", "parity", "confusion", "overlays"]

# (absorber, partner, cn, mnnd, neighbour): one labelled absorbing site per structure
SITES = [("Cu", "O", 4, 1.95), ("Cu", "S", 4, 2.30), ("Cu", "O", 6, 2.05), ("Cu", "S", 6, 2.40),
         ("Fe", "O", 6, 2.02), ("Fe", "O", 4, 1.88), ("Fe", "S", 4, 2.25), ("Zn", "O", 4, 1.97)]  # fmt: skip


def _xanes(cn: int, r: float, e0: float) -> tuple[np.ndarray, np.ndarray]:
    e = np.arange(e0 - 30.0, e0 + 120.0, 0.5)
    x = e - e0
    mu = 0.5 + np.arctan(x / 1.5) / np.pi + 0.08 * cn * np.exp(-0.5 * ((x - 6.0) / 3.0) ** 2)
    return e, mu + 0.15 * np.exp(-0.5 * ((x - 150.0 / r**2) / 4.0) ** 2) * (x > 0)


def _chi(cn: int, r: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(0.0, 14.0, 0.05)
    return k, cn / (np.maximum(k, 0.5) * r**2) * np.sin(2 * k * r + 0.5) * np.exp(-0.008 * k**2)


def build_store(url: str, *, predictions: bool = True) -> dict:
    """Structures, sites and spectra (XANES + EXAFS per site); with *predictions*, models and
    predictions of every task incl. closed loop. Returns ids for assertions."""
    from pymatgen.core import Lattice, Structure

    from xastruct import ingest, train
    from xastruct.schema import models as models_t
    from xastruct.schema import predictions as pred_t

    eng = store.get_engine(url)
    items = []
    for i, (el, nb, cn, r) in enumerate(SITES):
        s = Structure(Lattice.cubic(4.0 + 0.1 * i), [el, nb], [[0, 0, 0], [0.5, 0.5, 0.5]])
        row = ingest.structure_row(s, source="synthetic", source_id=f"syn-{i}", provenance={})
        lab = dict(site_index=0, element=el, equivalent_to=0, multiplicity=1, cn=cn, mnnd=r, dominant_neighbor=nb,
                   neighbors={nb: cn}, label_method="synthetic")  # fmt: skip
        e0 = {"Cu": 8979.0, "Fe": 7112.0, "Zn": 9659.0}[el]
        e, mu = _xanes(cn, r, e0)
        k, chi = _chi(cn, r)
        specs = [dict(key=f"syn-{i}-{kind}", absorber=el, edge="K", kind=kind, source="feff9",
                      energies=(e if kind == "XANES" else e0 + k[1:] ** 2 * 3.81).tolist(),
                      mu=(mu if kind == "XANES" else 1.0 + 0 * k[1:]).tolist(),
                      k=None if kind == "XANES" else k.tolist(), chi=None if kind == "XANES" else chi.tolist(),
                      e0=e0, normalized=True, _structure_hash=row["content_hash"], _site_index=0)
                 for kind in ("XANES", "EXAFS")]  # fmt: skip
        items.append(ingest.Parsed(name=f"syn-{i}", structure=row, sites=[lab], spectra=specs))
    ingest.write_parsed(eng, items)
    if not predictions:
        return {"eng": eng}

    def fwd_metrics(mae):
        return {"summary": {"test": {"n": 5, "mae": {"mean": mae, "std": 0.001}, "cosine": {"mean": 0.99, "std": 0}}},
                "ensemble": {"test": {"n": 5, "mae": mae}}, "n_seeds": 2}  # fmt: skip

    def inv_metrics(el, metric, v):
        g = {"n": 6, metric: [v, 0.01]}
        return {"test": {el: g, "overall": g}, "n": {"train": 20, "val": 4, "test": 6}, "seeds": 2}

    model_rows = [
        dict(name="forward/Cu/K/XANES/xastruct/v1", task="forward", element="Cu", edge="K", kind="XANES",
             arch="xastruct", version=1, grid=XANES_GRID, metrics=fwd_metrics(0.05)),
        dict(name="forward/Fe/K/XANES/xastruct/v1", task="forward", element="Fe", edge="K", kind="XANES",
             arch="xastruct", version=1, grid=XANES_GRID, metrics=fwd_metrics(0.09)),
        dict(name="forward/Cu/K/EXAFS/xastruct/v1", task="forward", element="Cu", edge="K", kind="EXAFS",
             arch="xastruct", version=1, grid=EXAFS_GRID, metrics=fwd_metrics(0.3)),
        dict(name="forward/Zn/K/XANES/mean/v1", task="forward", element="Zn", edge="K", kind="XANES",
             arch="mean", version=1, grid=XANES_GRID, metrics=None),  # no metric: hatched cell
        dict(name="cn/Cu/K/XANES+EXAFS/rf/v1", task="cn", element="Cu", edge="K", kind="XANES+EXAFS", arch="rf",
             version=1, metrics=inv_metrics("Cu", "accuracy", 0.8)),
        dict(name="cn/Fe/K/XANES+EXAFS/rf/v1", task="cn", element="Fe", edge="K", kind="XANES+EXAFS", arch="rf",
             version=1, metrics=inv_metrics("Fe", "accuracy", 0.6)),
        dict(name="neighbor/Cu/K/XANES+EXAFS/sgmlp/v1", task="neighbor", element="Cu", edge="K",
             kind="XANES+EXAFS", arch="sgmlp", version=1, metrics=inv_metrics("Cu", "accuracy", 0.9)),
        # universal MNND model: element NULL, one test group per element (as xastruct/inverse.py writes)
        dict(name="mnnd/all/all/XANES+EXAFS/sgmlp/v1", task="mnnd", element=None, edge=None, kind="XANES+EXAFS",
             arch="sgmlp", version=1, config={"edges": ["K"]},
             metrics={"test": {"Cu": {"n": 4, "mae": [0.04, 0.0]}, "Fe": {"n": 3, "mae": [0.07, 0.0]},
                               "Zn": {"n": 1, "mae": [0.02, 0.0]}, "overall": {"n": 8, "mae": [0.05, 0.0]}}}),
    ]  # fmt: skip
    with eng.begin() as conn:
        for m in model_rows:
            conn.execute(sa.insert(models_t).values(**m))
        mid = {r.name: r.id for r in conn.execute(sa.select(models_t.c.name, models_t.c.id))}
        site_rows = conn.execute(sa.text(
            "SELECT si.id AS site_id, si.structure_id, si.element, si.cn, si.mnnd, si.dominant_neighbor, "
            "sp.id AS spectrum_id, sp.kind FROM sites si JOIN spectra sp ON sp.site_id = si.id ORDER BY sp.id"
        )).mappings().all()  # fmt: skip
    by_spec = {(r["site_id"], r["kind"]): r for r in site_rows}
    rng = np.random.default_rng(0)
    fwd_rows, inv_rows = [], []
    site_ids = sorted({r["site_id"] for r in site_rows})
    for n_site, sid in enumerate(site_ids):
        lab = by_spec[(sid, "XANES")]
        el = lab["element"]
        for kind, grid in (("XANES", XANES_GRID), ("EXAFS", EXAFS_GRID)):
            name = f"forward/{el}/K/{kind}/xastruct/v1"
            if name not in mid:
                continue
            spec_id = by_spec[(sid, kind)]["spectrum_id"]
            k, chi = _chi(lab["cn"], lab["mnnd"])
            e, mu = _xanes(lab["cn"], lab["mnnd"], 0.0)
            ref = train.resample(grid, energies=e, mu=mu, e0=0.0, k=k, chi=chi)
            noise = 0.01 + 0.03 * n_site  # distinct errors so best/median/worst differ
            pred = ref + rng.normal(0, noise, ref.size)
            fwd_rows.append(dict(
                key=f"{mid[name]}:site:{sid}", model_id=mid[name], structure_id=lab["structure_id"], site_id=sid,
                task="forward", element=el, edge="K", kind=kind, target="site",
                energies=train.grid_points(grid).tolist(), mu=pred.tolist(), uncertainty=noise / 2,
                reference_spectrum_id=spec_id, reference_mae=float(np.mean(np.abs(pred - ref))),
                reference_cosine=float(pred @ ref / np.linalg.norm(pred) / np.linalg.norm(ref))))  # fmt: skip
        for task, name in (("cn", f"cn/{el}/K/XANES+EXAFS/rf/v1"), ("neighbor", f"neighbor/{el}/K/XANES+EXAFS/sgmlp/v1"),
                           ("mnnd", "mnnd/all/all/XANES+EXAFS/sgmlp/v1")):  # fmt: skip
            if name not in mid:
                continue
            spec_id = by_spec[(sid, "EXAFS")]["spectrum_id"]
            base = dict(model_id=mid[name], task=task, element=el, edge="K", kind="EXAFS", target="spectrum",
                        structure_id=lab["structure_id"], site_id=sid, spectrum_id=spec_id,
                        key=f"{mid[name]}:spectrum:{spec_id}")  # fmt: skip
            if task == "mnnd":
                inv_rows.append(dict(base, value=lab["mnnd"] + rng.normal(0, 0.05), uncertainty=0.04))
            elif task == "cn":
                cn = lab["cn"] if n_site % 3 else (6 if lab["cn"] == 4 else 4)  # every third one wrong
                inv_rows.append(dict(base, value=float(cn), label=str(cn), uncertainty=0.5,
                                     probabilities={"4": 0.7, "6": 0.3} if cn == 4 else {"4": 0.3, "6": 0.7}))
            else:
                nb = lab["dominant_neighbor"] if n_site != 1 else "O"
                inv_rows.append(dict(base, label=nb, uncertainty=0.2, probabilities={nb: 0.8},
                                     neighbor_period=inv.class_period(nb), period_probability=0.8))
    with eng.begin() as conn:
        store.bulk_insert(conn, "predictions", fwd_rows)
        fwd_ids = {(r.site_id, r.kind): r.id for r in conn.execute(sa.select(pred_t.c.id, pred_t.c.site_id, pred_t.c.kind)
                                                                   .where(pred_t.c.task == "forward"))}  # fmt: skip
        store.bulk_insert(conn, "predictions", inv_rows)
        # closed loop: the inverse models on the forward-predicted XANES of each site
        closed = []
        for r in inv_rows:
            fid = fwd_ids.get((r["site_id"], "XANES"))
            if fid is None:
                continue
            closed.append(dict(r, target="prediction", spectrum_id=None, input_prediction_id=fid, kind="XANES",
                               key=f"{r['model_id']}:prediction:{fid}",
                               value=None if r.get("value") is None else r["value"] + 0.03))  # fmt: skip
        store.bulk_insert(conn, "predictions", closed)
    return {"eng": eng, "n_forward": len(fwd_rows), "n_inverse": len(inv_rows), "n_closed": len(closed)}


def _png_ok(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG whose pixels are not all one colour."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", data[16:24])
    assert w > 200 and h > 150, (path, w, h)
    from matplotlib.image import imread

    img = imread(path)
    assert img.std() > 0.01, f"{path} looks blank"
    return w, h


def _sections(html: str) -> dict[str, bool]:
    return {m.group(1): m.group(2) == "true"
            for m in re.finditer(r"data-section='(\w+)' data-empty='(true|false)'", html)}  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One synthetic DuckDB store for the tests that need no second backend (built once: saves time)."""
    d = tmp_path_factory.mktemp("report")
    url = f"duckdb:///{d / 'store.duckdb'}"
    info = build_store(url)
    yield {**info, "url": url, "dir": d}
    store.dispose_engines()


# ---------------------------------------------------------------------------------------- tests


def test_report_with_predictions(db_url, tmp_path):
    info = build_store(db_url)
    out = tmp_path / "report"
    steps = []

    class Bar:
        def __init__(self, total, label):
            steps.append(("start", total, label))

        def __enter__(self):
            return lambda n=1: steps.append(("advance", n))

        def __exit__(self, *exc):
            return False

    res = rep.build_report(info["eng"], out_dir=out, progress_factory=Bar)
    html = (out / "index.html").read_text()
    assert _sections(html) == {k: False for k in SECTIONS}, "every section has content"
    assert "no data yet" not in html.lower() and "class='note no-data'" not in html
    names = {p.name for p in res.figures}
    assert {"parity_mnnd.png", "confusion_cn.png", "confusion_neighbor.png", "per_element_errors.png",
            "forward_overlays_xanes.png", "forward_overlays_exafs.png"} <= names  # fmt: skip
    # one periodic table per task / kind / edge
    assert {"model_map_forward_xanes_k.png", "model_map_forward_exafs_k.png", "model_map_cn_xanes_exafs_k.png",
            "model_map_neighbor_xanes_exafs_k.png", "model_map_mnnd_xanes_exafs_k.png"} <= names  # fmt: skip
    for p in res.figures:
        assert p.exists() and f"src='figures/{p.name}'" in html
        _png_ok(p)
    assert steps[0] == ("start", 5, "report figures") and steps.count(("advance", 1)) == 5
    # tables: counts and per-element metrics (closed-loop rows listed separately)
    assert re.search(r"<td>structures</td><td class='num'>8</td>", html)
    assert "id='per-element-table'" in html and "closed loop" in html and " Å" in html
    # neighbour rows carry the period accuracy as a number (other tasks a dash)
    table = html.split("id='per-element-table'")[1].split("</table>")[0]
    assert "neighbour period accuracy" in table
    nb_rows = [r for r in table.split("<tr>") if r.startswith("<td>neighbor</td>")]
    assert nb_rows and all(re.search(r"<td class='num'>[01](\.\d+)?</td><td class='num'>[01](\.\d+)?</td><td class='num'>–</td>", r)
                       for r in nb_rows)
    assert res.counts["predictions"] == info["n_forward"] + info["n_inverse"] + info["n_closed"]


def test_report_on_empty_store_says_what_to_run(db_url, tmp_path):
    eng = store.get_engine(db_url)
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "parity_mnnd.png").write_bytes(b"stale")  # from an earlier report
    (out / "figures" / "mine.png").write_bytes(b"not ours")
    res = rep.build_report(eng, out_dir=out)
    html = (out / "index.html").read_text()
    assert _sections(html) == {"summary": False, **{k: True for k in SECTIONS[1:]}}
    assert res.figures == [] and res.empty_sections == SECTIONS[1:]
    assert html.count("class='note no-data'") == 5
    assert "run <code>xastruct screen --elements" in html and "xastruct train" in html
    assert not (out / "figures" / "parity_mnnd.png").exists() and (out / "figures" / "mine.png").exists()


def test_report_partly_screened_store(duck_url, tmp_path):
    """Structures and spectra but no models/predictions: summary counts, every other section a note."""
    info = build_store(duck_url, predictions=False)
    res = rep.build_report(info["eng"], out_dir=tmp_path / "r", elements=["Cu", "Fe"])
    html = res.index.read_text()
    assert res.counts == {"structures": 7, "sites": 7, "spectra": 14, "models": 0, "predictions": 0}
    assert "xastruct screen --elements Cu,Fe --task inverse" in html


def test_report_cli_end_to_end(shared, tmp_path):
    store.dispose_engines()  # the CLI opens the DuckDB file itself
    url, out = shared["url"], tmp_path / "site"
    res = CliRunner().invoke(main, ["report", "--elements", "fe", "--out", str(out), "--db", url],
                             catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "index.html" in res.output
    html = (out / "index.html").read_text()
    assert "XAStruct report: Fe" in html
    # the element filter reaches every section: Fe rows only, no Cu-only figures
    table = html.split("id='per-element-table'")[1].split("</table>")[0]
    assert "<td>Fe</td>" in table and "<td>Cu</td>" not in table
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"model_map_forward_xanes_k.png", "parity_mnnd.png", "forward_overlays_xanes.png"} <= figs
    assert "model_map_forward_exafs_k.png" not in figs and "forward_overlays_exafs.png" not in figs
    assert re.search(r"absorbing sites \(labelled\)</td><td class='num'>8</td><td class='num'>3</td>", html)
    # Fe has no neighbour model: that half of the confusion section says so, the CN half is drawn
    assert "confusion_cn.png" in figs and "No dominant neighbour predictions" in html
    bad = CliRunner().invoke(main, ["report", "--elements", "Cu,Xx", "--out", str(out), "--db", url])
    assert bad.exit_code == 1 and "'Xx' is not an element symbol" in bad.output
    f = tmp_path / "afile"
    f.write_text("x")
    bad = CliRunner().invoke(main, ["report", "--out", str(f), "--db", url])
    assert bad.exit_code != 0
    with pytest.raises(InputError, match="not a directory"):
        rep.build_report(store.get_engine(url), out_dir=f)


def test_periodic_table_positions():
    pos = {s: rep.table_position(s) for s in rep.ELEMENTS[:118]}
    assert pos["H"] == (0, 0) and pos["He"] == (0, 17) and pos["B"] == (1, 12) and pos["Cu"] == (3, 10)
    assert pos["La"] == (8, 3) and pos["Lu"] == (8, 17) and pos["Hf"] == (5, 3) and pos["Ac"] == (9, 3)
    assert len(set(pos.values())) == 118, "no two elements share a cell"
    assert rep.parse_elements("fe, Co,,Fe") == ["Fe", "Co"] and rep.parse_elements("") is None


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(shared, tmp_path):
    """The page really shows its figures in a browser: the inline script counts decoded <img>s."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium via .ci/chromium.sh)")
    # Fe alone still draws every kind of figure (periodic tables, bars, parity, confusion, overlays)
    res = rep.build_report(store.get_engine(shared["url"]), out_dir=tmp_path / "site", elements=["Fe"])
    n = len(res.figures)
    assert n >= 7
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--allow-file-access-from-files",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           res.index.resolve().as_uri()]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}  # chromium writes caches under HOME
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    m = re.search(r'id="render-check"[^>]*data-loaded="(\d+)"[^>]*data-total="(\d+)"', dom)
    assert m, f"render check did not run: {dom[-1500:]}"
    assert (int(m.group(1)), int(m.group(2))) == (n, n), f"{m.group(1)} of {m.group(2)} figures decoded, want {n}"
    assert f"{n} of {n} figures displayed" in dom
    # and a broken page is caught: the check is not vacuous
    shutil.rmtree(tmp_path / "site" / "figures")
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env).stdout
    m = re.search(r'id="render-check"[^>]*data-loaded="(\d+)"', dom)
    assert m and m.group(1) == "0"
