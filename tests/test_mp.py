"""Materials Project client, offline: emmet-core XASDoc fixtures and a fake MPRester."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from xastruct.errors import InputError, RemoteError
from xastruct.mp import XAS_ENDPOINT, fetch_xas, xasdoc_to_record

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mp"


def _load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _docs():
    from emmet.core.xas import XASDoc

    return [XASDoc.model_validate(_load(p.stem)) for p in sorted(FIXTURES.glob("*.json"))]


class FakeXAS:
    """Stands in for MPRester().materials.xas: filters like the server, or fails like it."""

    def __init__(self, docs, error: Exception | None = None):
        self.docs, self.error, self.calls = docs, error, []

    def search(self, **kw):
        self.calls.append(kw)
        if self.error is not None:
            raise self.error
        return [
            d for d in self.docs
            if d.absorbing_element.symbol == kw["absorbing_element"]
            and d.edge.value == kw["edge"] and d.spectrum_type.value == kw["spectrum_type"]
        ]  # fmt: skip


def fake_rester(docs=None, error=None):
    return SimpleNamespace(materials=SimpleNamespace(xas=FakeXAS(docs or [], error)))


def test_fixtures_are_xasdoc_schema():
    from emmet.core.xas import XASDoc

    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) == 6
    for name in names:
        doc = XASDoc.model_validate(_load(name))  # (validation rewrites its input in place)
        # round trip: the stored JSON is what emmet serializes (floats to the last bits: lattice angles
        # recomputed from the matrix differ in the 15th digit between numpy builds)
        assert _same(json.loads(json.dumps(doc.model_dump(mode="json"), sort_keys=True)), _load(name))


def _same(a, b) -> bool:
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def test_site_specific_doc_to_record():
    structure, rec, extra = xasdoc_to_record(_load("mp-19009_Ni_K_XANES"))
    raw = _load("mp-19009_Ni_K_XANES")["spectrum"]
    assert structure.composition.reduced_formula == "NiO"
    assert (rec.absorber, rec.edge, rec.kind, rec.source) == ("Ni", "K", "XANES", "mp")
    assert rec.site_index == 0 and structure[0].specie.symbol == "Ni"
    np.testing.assert_array_equal(rec.energies, raw["x"])
    np.testing.assert_array_equal(rec.mu, raw["y"])
    assert extra == {
        "material_id": "mp-19009",
        "spectrum_id": "mp-19009-XANES-Ni-K",
        "formula_pretty": "NiO",
        "last_updated": "2024-06-01T00:00:00+00:00",
        "site_averaged": False,
    }
    assert rec.metadata["material_id"] == "mp-19009"
    assert rec.mu_norm is not None and 0.9 < rec.edge_step < 1.1
    assert abs(rec.e0 - 8333) < 5  # synthetic edge sits at the tabulated Ni K energy
    assert len(rec.sha256) == 64 and rec.path is None


def test_object_and_dict_give_same_record():
    from emmet.core.xas import XASDoc

    raw = _load("mp-30_Cu_K_XANES")
    s1, r1, e1 = xasdoc_to_record(raw)
    assert raw == _load("mp-30_Cu_K_XANES")  # the caller's dict is left alone
    s2, r2, e2 = xasdoc_to_record(XASDoc.model_validate(raw))
    assert s1 == s2 and e1 == e2 and r1.sha256 == r2.sha256
    np.testing.assert_array_equal(r1.mu_norm, r2.mu_norm)


def test_site_averaged_doc_has_no_site_index():
    structure, rec, extra = xasdoc_to_record(_load("mp-361_Cu_K_XANES_avg"))
    assert rec.site_index is None and extra["site_averaged"] is True
    assert type(structure).__name__ == "Structure"  # not the SymmetrizedStructure
    assert structure.composition.reduced_formula == "Cu2O"
    assert extra["spectrum_id"] == "mp-361-XANES-Cu-K"


def test_o_k_edge_site_must_match_absorber():
    _, rec, _ = xasdoc_to_record(_load("mp-19009_O_K_XANES"))
    assert (rec.absorber, rec.site_index) == ("O", 1)
    raw = _load("mp-19009_O_K_XANES")
    raw["spectrum"]["absorbing_index"] = 0  # a Ni site
    with pytest.raises(InputError, match="absorbing_index 0 is a Ni site"):
        xasdoc_to_record(raw)


def test_exafs_and_unsupported_edge():
    _, rec, _ = xasdoc_to_record(_load("mp-30_Cu_K_EXAFS"))
    assert rec.kind == "EXAFS" and rec.energies[-1] - rec.e0 > 700
    with pytest.raises(InputError, match="L2,3"):
        xasdoc_to_record(_load("mp-30_Cu_L23_XANES"))
    bad = _load("mp-30_Cu_K_XANES")
    del bad["absorbing_element"]
    with pytest.raises(InputError, match="XASDoc schema"):
        xasdoc_to_record(bad)


def test_fetch_with_fake_rester_filters_and_converts():
    rester = fake_rester(_docs())
    out = list(fetch_xas(elements=["Cu", "Ni"], rester=rester))
    ids = [extra["spectrum_id"] for _, _, extra in out]
    assert ids == ["mp-30-XANES-Cu-K", "mp-361-XANES-Cu-K", "mp-19009-XANES-Ni-K"]
    calls = rester.materials.xas.calls
    assert [c["absorbing_element"] for c in calls] == ["Cu", "Ni"]
    assert all(c["edge"] == "K" and c["spectrum_type"] == "XANES" for c in calls)
    for structure, rec, _ in out:
        assert rec.source == "mp" and rec.absorber in structure.composition.chemical_system

    exafs = list(fetch_xas(elements="Cu", kind="EXAFS", rester=fake_rester(_docs())))
    assert [r.kind for _, r, _ in exafs] == ["EXAFS"]


def test_fetch_skips_bad_documents_unless_strict():
    docs = _docs()
    l23 = [d for d in docs if d.edge.value == "L2,3"]
    assert len(l23) == 1
    # the fake only filters by what we ask; make it return the L2,3 doc for an L3 query
    l23_as_l3 = SimpleNamespace(
        materials=SimpleNamespace(xas=SimpleNamespace(search=lambda **kw: l23))
    )
    with pytest.warns(UserWarning, match="L2,3"):
        assert list(fetch_xas(elements="Cu", edge="L3", rester=l23_as_l3)) == []
    with pytest.raises(InputError, match="L2,3"):
        list(fetch_xas(elements="Cu", edge="L3", rester=l23_as_l3, strict=True))


def test_fetch_without_key_raises_remote_error(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(RemoteError) as exc:
        fetch_xas(elements=["Cu"])  # raised at call time, before any iteration
    msg = str(exc.value)
    assert "MP_API_KEY is not set" in msg and "--api-key" in msg
    assert "materialsproject.org/api" in msg


def test_fetch_connection_error_from_rester_becomes_remote_error():
    err = requests.exceptions.ConnectionError("Max retries exceeded: Name or service not known")
    it = fetch_xas(elements=["Cu"], rester=fake_rester(error=err))
    with pytest.raises(RemoteError) as exc:
        next(it)
    msg = str(exc.value)
    assert XAS_ENDPOINT in msg and "Name or service not known" in msg
    assert "connectivity" in msg and "absorbing_element=Cu" in msg
    assert isinstance(exc.value.__cause__, requests.exceptions.ConnectionError)


def test_fetch_real_client_construction_failure(monkeypatch):
    """With a key and no rester the real MPRester is built; its network failure is wrapped."""
    import mp_api.client

    class Unreachable:
        def __init__(self, api_key=None, **kw):
            self.api_key = api_key
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool: /heartbeat")

    monkeypatch.setattr(mp_api.client, "MPRester", Unreachable)
    monkeypatch.setenv("MP_API_KEY", "k" * 32)
    with pytest.raises(RemoteError, match="connecting.*heartbeat"):
        list(fetch_xas(elements="Cu"))


def test_fetch_argument_validation():
    for kw, match in [({"elements": []}, "no absorbing elements"),
                      ({"elements": ["Qq"]}, "unknown element"),
                      ({"elements": ["Cu"], "edge": "L1"}, "no L1-edge"),
                      ({"elements": ["Cu"], "kind": "RIXS"}, "unknown spectrum kind")]:
        with pytest.raises(InputError, match=match):
            fetch_xas(rester=fake_rester(), **kw)


def test_ingest_mp_into_store_is_idempotent(db_url):
    """Fake MP documents go through the real ingest into the store; a rerun adds nothing."""
    import sqlalchemy as sa

    from xastruct import store
    from xastruct.ingest import ingest_mp

    eng = store.get_engine(db_url)
    res = ingest_mp(eng, elements=["Cu", "Ni"], rester=fake_rester(_docs()))
    assert res["added"]["spectra"] == 3 and res["added"]["structures"] == 3 and not res["failed"]
    with eng.connect() as c:
        rows = c.execute(sa.text(
            "SELECT st.source, st.source_id, sp.absorber, si.element, si.cn FROM spectra sp "
            "JOIN structures st ON st.id = sp.structure_id LEFT JOIN sites si ON si.id = sp.site_id "
            "ORDER BY st.source_id")).all()
    assert {r[1] for r in rows} == {"mp-30", "mp-361", "mp-19009"} and all(r[0] == "mp" for r in rows)
    assert all(r[3] in (None, r[2]) for r in rows)  # a site-specific spectrum sits on an absorber site
    again = ingest_mp(eng, elements=["Cu", "Ni"], rester=fake_rester(_docs()))
    assert again["added"] == {"structures": 0, "sites": 0, "spectra": 0}


def test_cli_ingest_mp_without_key_says_so(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from xastruct.cli import main

    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.delenv("PMG_MAPI_KEY", raising=False)
    res = CliRunner().invoke(main, ["ingest", "mp", "--elements", "Fe", "--db", f"duckdb:///{tmp_path / 'x.duckdb'}"])
    assert res.exit_code != 0 and "MP_API_KEY" in res.output
