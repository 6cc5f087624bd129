"""The dataset's own FEFF spectra of a crystal, as a measurement of it sees them: one helper for the
benchmarks that compare stored spectra with measured scans (bench_exafs_rank.py,
bench_forward_measured.py, bench_sim_vs_measured.py)."""

from __future__ import annotations

import json

import numpy as np

#: which stored spectra stand for FEFF: feff8l chi(k), FEFF10 edge-step-normalized mu with its E0
_KIND = {
    "EXAFS": ("sp.k, sp.chi, 0.0", "sp.kind = 'EXAFS' AND sp.source = 'feff8l' AND sp.k IS NOT NULL"),
    "XANES": ("sp.energies, sp.mu, sp.e0",
              "sp.kind = 'XANES' AND sp.source = 'feff10' AND sp.normalized AND sp.e0 IS NOT NULL"),
}


def site_averaged(engine, element: str, kind: str, x: np.ndarray, *, edge: str = "K",
                  source_id: str | None = None, structures: bool = False) -> list[dict]:
    """Every stored structure with such spectra of *element* (or the one with *source_id*): its sites'
    spectra on the grid *x* (EXAFS: chi(k) on k; XANES: normalized mu on E - E0) and their mean
    weighted by each site's multiplicity (orbit size in the cell) -- the site average a measurement
    of the crystal records. Each row: id, source_id, formula, site_indices, weights, spectra (sites, x),
    feff (the weighted mean) and, with *structures*, the pymatgen structure."""
    from pymatgen.core import Structure

    cols, where = _KIND[kind]
    params: tuple = (element, edge)
    if source_id is not None:
        where += " AND st.source_id = ?"
        params += (source_id,)
    with engine.connect() as c:
        rows = c.exec_driver_sql(
            f"SELECT st.id, st.source_id, st.formula, st.structure_json, si.site_index, {cols}, "
            "coalesce(si.multiplicity, 1) FROM spectra sp JOIN structures st ON st.id = sp.structure_id "
            "LEFT JOIN sites si ON si.id = sp.site_id "
            f"WHERE sp.absorber = ? AND sp.edge = ? AND {where} ORDER BY st.id, si.site_index", params).all()
    by: dict[int, dict] = {}
    for sid, src, formula, js, site, a, b, e0, mult in rows:
        d = by.setdefault(sid, {"id": sid, "source_id": src, "formula": formula, "json": js, "site_indices": [],
                                "weights": [], "spectra": []})
        d["site_indices"].append(None if site is None else int(site))
        d["weights"].append(float(mult))
        d["spectra"].append(np.interp(x, np.asarray(a, float) - float(e0), np.asarray(b, float)))
    out = []
    for d in by.values():
        js = d.pop("json")
        if structures:
            d["structure"] = Structure.from_dict(js if isinstance(js, dict) else json.loads(js))
        d["weights"] = np.asarray(d["weights"])
        d["spectra"] = np.stack(d["spectra"])
        d["feff"] = np.average(d["spectra"], axis=0, weights=d["weights"])
        out.append(d)
    return out
