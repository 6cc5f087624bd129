"""The shipped default dataset (xastruct/data/default): coverage, size, provenance, and that it loads."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from xastruct.dataset import DEFAULT_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_DIR / "spectra.parquet").exists(),
                                reason="no embedded dataset (make dataset)")
NOBLE = {"He", "Ne", "Ar", "Kr", "Xe", "Rn"}


def test_size_and_files():
    total = sum(p.stat().st_size for p in DEFAULT_DIR.glob("*.parquet"))
    assert total < 40e6


def test_covers_at_least_75_absorbing_elements_from_the_file():
    sp = pq.read_table(DEFAULT_DIR / "spectra.parquet", columns=["absorber", "edge", "kind", "source"])
    exafs_k = set(pc.unique(sp.filter(pc.and_(pc.equal(sp["kind"], "EXAFS"), pc.equal(sp["edge"], "K")))["absorber"])
                  .to_pylist())
    assert len(exafs_k - NOBLE) >= 75, sorted(exafs_k)
    assert set(pc.unique(sp["source"]).to_pylist()) <= {"feff8l", "feff10"}
    # FEFF10 XANES: all 3d metals (K) and a spread of main-group K and heavy L3 edges, >= 25 elements
    xanes = sp.filter(pc.equal(sp["kind"], "XANES"))
    xanes_k = set(pc.unique(xanes.filter(pc.equal(xanes["edge"], "K"))["absorber"]).to_pylist())
    assert {"Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"} <= xanes_k, sorted(xanes_k)
    assert len(set(pc.unique(xanes["absorber"]).to_pylist())) >= 25
    assert set(pc.unique(xanes["edge"]).to_pylist()) == {"K", "L3"}


def test_every_spectrum_links_to_a_labelled_site_and_has_provenance():
    sp = pq.read_table(DEFAULT_DIR / "spectra.parquet", columns=["content_hash", "site_index", "absorber",
                                                                  "provenance", "normalized"]).to_pylist()
    si = pq.read_table(DEFAULT_DIR / "sites.parquet", columns=["content_hash", "site_index", "element", "cn"])
    sites = {(r["content_hash"], r["site_index"]): r for r in si.to_pylist()}
    st = set(pq.read_table(DEFAULT_DIR / "structures.parquet", columns=["content_hash"])["content_hash"].to_pylist())
    for r in sp:
        site = sites[(r["content_hash"], r["site_index"])]
        assert r["content_hash"] in st and site["element"] == r["absorber"] and site["cn"] is not None
        prov = json.loads(r["provenance"])
        assert prov["code"] in ("feff8l", "feff10") and prov["input_hash"] and prov["params"] and prov["versions"]


def test_no_single_neighbour_dominates():
    si = pq.read_table(DEFAULT_DIR / "sites.parquet", columns=["dominant_neighbor"])
    counts = pc.value_counts(si["dominant_neighbor"]).to_pylist()
    top = max(c["counts"] for c in counts)
    assert top / si.num_rows <= 0.5
