"""Readers: real FEFF9 / XDI files from the shared data, synthetic edge cases, property tests."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xastruct.errors import InputError
from xastruct.readers import (
    EDGES,
    KINDS,
    SpectrumRecord,
    normalize,
    read_feff_chi,
    read_feff_xmu,
    read_spectrum_file,
    read_structures,
    read_two_column,
    read_xdi,
    tabulated_edge_energy,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CU_FEFF9 = SHARED / "cu_k_feff9" / "materials"
XASLIB = SHARED / "xaslib"
needs_shared = pytest.mark.skipif(not CU_FEFF9.is_dir() or not XASLIB.is_dir(),
                                  reason="shared data not mounted")

FEFF9_XMU = CU_FEFF9 / "mp-1005792" / "FEFF-XANES" / "008_Cu" / "xmu.dat"


def _feff_paths(n=12):
    """A deterministic spread of FEFF9 files across the set."""
    files = sorted(CU_FEFF9.glob("*/FEFF-XANES/*_Cu/xmu.dat"))
    return files[:: max(1, len(files) // n)][:n]


def _post_edge_level(rec: SpectrumRecord, start=30.0) -> float:
    return float(rec.mu_norm[rec.energies > rec.e0 + start].mean())


# ------------------------------------------------------------------------------------ FEFF


@needs_shared
def test_feff9_xmu_reads_header_columns_and_site():
    path = FEFF9_XMU
    rec = read_feff_xmu(path)
    raw = np.loadtxt(path)
    assert (rec.absorber, rec.edge, rec.kind, rec.source) == ("Cu", "K", "XANES", "feff9")
    assert rec.site_index == 8  # from the 008_Cu folder
    np.testing.assert_array_equal(rec.energies, raw[:, 0])
    np.testing.assert_array_equal(rec.mu, raw[:, 3])
    # E0 is FEFF's Fermi level (k = 0), as for simulated FEFF runs; e = 0 is kept in metadata
    assert rec.e0 == pytest.approx(float(np.interp(0.0, raw[:, 2], raw[:, 0])), abs=1e-9)
    assert rec.e0 == pytest.approx(8988.316, abs=0.002)
    assert rec.metadata["edge_energy_feff_ev"] == pytest.approx(8996.412, abs=0.002)
    assert rec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    md = rec.metadata
    assert md["feff_version"] == "FEFF 9.9.1"
    assert md["rfms"] == 9.0 and md["s02"] == 0.95
    assert md["potentials_z"] == [62, 29, 33, 8]  # Sm Cu As O
    assert rec.k is None and rec.chi is None  # XANES: chi column not kept
    json.dumps(md)  # metadata must be JSON-storable


@needs_shared
@pytest.mark.parametrize("path", _feff_paths(), ids=lambda p: f"{p.parts[-4]}-{p.parts[-2]}")
def test_feff9_normalized_post_edge_level_is_one(path):
    rec = read_feff_xmu(path)
    assert rec.mu_norm is not None, rec.metadata.get("normalize_error")
    # FEFF already scales mu to the edge step, so the fitted step is ~1 and so is the level
    assert 0.85 < rec.edge_step < 1.15
    assert 0.9 < _post_edge_level(rec) < 1.15
    assert abs(rec.mu_norm[0]) < 0.15  # zero baseline: starts near 0


@needs_shared
def test_larch_default_ranges_fail_on_feff_but_adaptive_ranges_work():
    """Why normalize() picks its own ranges: larch's defaults fit the pre-edge line to the edge."""
    from larch.xafs.pre_edge import preedge

    path = FEFF9_XMU
    raw = np.loadtxt(path)
    e, mu = raw[:, 0], raw[:, 3]
    default = preedge(e, mu)
    sel = e > default["e0"] + 30
    assert not 0.8 < default["norm"][sel].mean() < 1.2  # measured: about -10
    for calculated in (False, True):  # constant pre-edge, or zero baseline
        e0, step, norm = normalize(e, mu, calculated=calculated, source=str(path))
        assert 0.9 < norm[e > e0 + 30].mean() < 1.15


@needs_shared
def test_feff_argument_conflicts_and_overrides():
    path = FEFF9_XMU
    with pytest.raises(InputError, match="Z=29"):
        read_feff_xmu(path, absorber="Fe")
    with pytest.raises(InputError, match="header says K"):
        read_feff_xmu(path, edge="L3")
    rec = read_feff_xmu(path, absorber="cu", kind="EXAFS", source="feff9-custom", site_index=3)
    assert (rec.kind, rec.source, rec.site_index) == ("EXAFS", "feff9-custom", 3)
    assert rec.k is not None and len(rec.k) == len(rec.energies)


def _xmu_text(omega, mu, *, e0, version="Feff8L (EXAFS)  0.1", z=29, shell="K", fermi=-4.0):
    """An xmu.dat as FEFF writes it (header lines, 3-decimal energies, 5-digit mu)."""
    e = omega - e0
    k = np.sign(e - fermi) * np.sqrt(np.abs(e - fermi) / 3.81)
    lines = [
        f"# Cu  {version}",
        "# POT  Non-SCF, core-hole, AFOLP (folp(0)= 1.150)",
        f"# Abs   Z={z} Rmt= 1.451 Rnm= 1.504 {shell}  shell",
        "# Pot 1 Z=29 Rmt= 1.357 Rnm= 1.395",
        f"# Mu={fermi:.3E} kf=1.819E+00 Vint=-1.634E+01 Rs_int= 1.993",
        "#  -----------------------------------------------------------------------",
        "#  omega    e    k    mu    mu0     chi     @#",
    ]
    for o, ee, kk, m in zip(omega, e, k, mu):
        lines.append(f"  {o:10.3f} {ee:10.3f} {kk:7.3f} {m:12.5E} {m * 0.98:12.5E} {m * 0.02:12.5E}")
    return "\n".join(lines) + "\n"


def _write_xmu(path, omega, mu, **kw):
    path.write_text(_xmu_text(omega, mu, **kw))
    return path


def _edge_mu(energy, e0, *, step=1.0, width=1.5, pre=(0.0, 0.0), wiggle=0.05):
    de = energy - e0
    k = np.sqrt(np.clip(de, 0, None) / 3.81)
    # (1 - exp(-k^2)) switches the wiggle on smoothly: sin(5k) alone has an infinite slope in E
    # at k = 0, which would move the steepest point (E0) off the edge
    chi = wiggle * np.sin(5 * k) * (1 - np.exp(-(k**2)))
    return pre[0] + pre[1] * de + step * (0.5 + np.arctan(de / width) / np.pi) * (1 + chi)


def test_feff8l_exafs_without_pre_edge_normalizes_with_zero_baseline(tmp_path):
    e0 = 8992.16
    omega = e0 - 3.7 + 3.81 * np.linspace(0, 20, 401) ** 2  # k grid from the Fermi level
    mu = _edge_mu(omega, e0 - 2, wiggle=0.02)
    rec = read_feff_xmu(_write_xmu(tmp_path / "xmu.dat", omega, mu, e0=e0, fermi=-3.7))
    assert (rec.source, rec.kind) == ("feff8l", "EXAFS")
    assert rec.k is not None and rec.k[0] == pytest.approx(0.0, abs=1e-3)
    assert rec.mu_norm is not None and rec.edge_step == pytest.approx(1.0, rel=0.05)
    assert rec.site_index is None  # tmp folder name is not <idx>_<El>
    # without the column-label line the sniffer still recognises FEFF by its version stamp
    p = tmp_path / "nolabels.dat"
    p.write_text("".join(ln for ln in (tmp_path / "xmu.dat").read_text().splitlines(True)
                         if "omega" not in ln))
    assert read_spectrum_file(p).source == "feff8l"


def test_feff_chi_reader(tmp_path):
    k = np.arange(0, 20.001, 0.05)
    chi = 0.1 * np.sin(2 * 2.55 * k) * np.exp(-0.01 * k**2)
    lines = ["# Cu  Feff8L (EXAFS)  0.1", "#  ---------",
             "#       k          chi          mag           phase @#"]
    lines += [f"{a:10.4f} {b:13.6E} {abs(b):13.6E} {0.0:13.6E}" for a, b in zip(k, chi)]
    p = tmp_path / "chi.dat"
    p.write_text("\n".join(lines) + "\n")
    kk, cc = read_feff_chi(p)
    np.testing.assert_allclose(kk, np.round(k, 4))
    np.testing.assert_allclose(cc, chi, rtol=1e-5, atol=1e-12)
    with pytest.raises(InputError, match="chi.dat"):
        read_spectrum_file(p)
    p.write_text("\n".join(lines[:3] + lines[10:] + lines[3:10]) + "\n")  # k out of order
    with pytest.raises(InputError, match="does not increase"):
        read_feff_chi(p)


# ------------------------------------------------------------------------------------ XDI


@needs_shared
def test_xdi_mutrans_column_uploadtest():
    path = XASLIB / "uploadtest.xdi"
    rec = read_xdi(path)
    raw = np.loadtxt(path)
    assert (rec.absorber, rec.edge, rec.source) == ("Fe", "K", "xdi")
    assert rec.metadata["mu_from"] == "mutrans"
    np.testing.assert_array_equal(rec.mu, raw[:, 1])
    assert rec.sample_name == "FeO"
    assert rec.metadata["beamline.name"] == "20BM"
    assert rec.metadata["mono.d_spacing"] == "3.13553"
    assert rec.metadata["comments"].startswith("data from NXS school")
    assert rec.kind == "EXAFS"  # data reach ~960 eV above E0
    assert abs(rec.e0 - tabulated_edge_energy("Fe", "K")) < 20
    assert 0.7 < rec.edge_step < 3


@needs_shared
def test_xdi_transmission_from_itrans_odd_extension_xd():
    path = XASLIB / "Fe" / "Hansel2001_goethite_xanes_004.xd"
    rec = read_xdi(path)
    raw = np.loadtxt(path)
    assert rec.metadata["mu_from"] == "-ln(itrans/i0)"
    np.testing.assert_allclose(rec.mu, -np.log(raw[:, 1] / raw[:, 2]), rtol=1e-12)
    assert rec.kind == "XANES"  # a 120 eV XANES scan
    assert rec.sample_name == "goethite" and rec.metadata["sample.formula"] == "FeOOH"
    assert rec.metadata["xdi_version"] == "1.1"


@needs_shared
def test_xdi_fluorescence_odd_extension_xxdi():
    path = XASLIB / "S" / "iron_sulfide_rt_01.xxdi"
    rec = read_xdi(path)
    raw = np.loadtxt(path)
    assert (rec.absorber, rec.edge) == ("S", "K")
    assert rec.metadata["mu_from"] == "ifluor/i0"
    np.testing.assert_allclose(rec.mu, raw[:, 1] / raw[:, 2], rtol=1e-12)
    # repeated ScanParameters.E0 lines: the first one is kept
    assert rec.metadata["scanparameters.e0"] == "2472.000"


@needs_shared
def test_xdi_prefer_selects_channel():
    path = XASLIB / "Sr" / "SrO_rt_01.xdi"  # has mutrans, mufluor, murefer
    assert read_xdi(path).metadata["mu_from"] == "mutrans"
    fl = read_xdi(path, prefer="fluorescence")
    assert fl.metadata["mu_from"] == "mufluor"
    np.testing.assert_array_equal(fl.mu, np.loadtxt(path)[:, 2])
    with pytest.raises(InputError, match="no usable absorption column"):
        read_xdi(XASLIB / "Fe" / "Hansel2001_goethite_xanes_004.xd", prefer="fluorescence")
    with pytest.raises(ValueError):
        read_xdi(path, prefer="reference")


@needs_shared
def test_xdi_matches_larch_reader():
    from larch.io import read_xdi as larch_read_xdi

    for path in [XASLIB / "Zn" / "Zn_foil.xdi", XASLIB / "Au" / "Au_Foil_L3_rt_2016Foils.xdi",
                 XASLIB / "Cu" / "cu_metal_rt.xdi"]:
        ours = read_xdi(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = larch_read_xdi(str(path))
        np.testing.assert_allclose(ours.energies, ref.energy)
        # larch adds 1e-12 to i0 before dividing
        np.testing.assert_allclose(ours.mu, ref.mutrans, rtol=1e-9)
        assert (ours.absorber, ours.edge) == (ref.element, ref.edge)


@needs_shared
def test_every_xaslib_file_reads():
    files = sorted(f for f in XASLIB.rglob("*") if f.is_file() and f.suffix not in (".rst", ".txt"))
    assert len(files) == 275  # 272 .xdi in element folders + uploadtest.xdi + .xd + .xxdi
    kinds = set()
    for f in files:
        rec = read_xdi(f)
        assert rec.mu_norm is not None, (f, rec.metadata.get("normalize_error"))
        assert np.isfinite(rec.mu).all() and np.all(np.diff(rec.energies) > 0)
        assert rec.edge in EDGES and rec.kind in KINDS
        if f.parent != XASLIB:
            assert rec.absorber == f.parent.name, f
        kinds.add((rec.kind, rec.metadata["mu_from"]))
    assert {m for _, m in kinds} == {"mutrans", "-ln(itrans/i0)", "ifluor/i0"}


def _xdi_text(energy, cols: dict, *, element="Cu", edge="K", units="eV", extra=""):
    head = ["# XDI/1.0 Test/0.1", f"# Column.1: energy {units}"]
    head += [f"# Column.{i + 2}: {n}" for i, n in enumerate(cols)]
    head += [f"# Element.symbol: {element}", f"# Element.edge: {edge}", "# Sample.name: test"]
    if extra:
        head.append(extra)
    head += ["# ///", "# synthetic", "#----", "# energy " + " ".join(cols)]
    rows = [f"{e:.4f} " + " ".join(f"{c[i]:.8g}" for c in cols.values()) for i, e in enumerate(energy)]
    return "\n".join(head + rows) + "\n"


def test_xdi_header_problems(tmp_path):
    e_cu = tabulated_edge_energy("Cu", "K")
    energy = np.linspace(e_cu - 100, e_cu + 200, 120)
    cols = {"mutrans": _edge_mu(energy, e_cu, pre=(0.3, -1e-4))}
    p = tmp_path / "a.xdi"

    p.write_text(_xdi_text(energy / 1000, cols, units="keV"))
    rec = read_xdi(p)
    np.testing.assert_allclose(rec.energies, np.round(energy / 1000, 4) * 1000)
    assert rec.kind == "XANES"  # 200 eV above E0

    for bad, match in [({"element": "Xx"}, "unknown element 'Xx'"),
                       ({"edge": "M5"}, "unsupported edge 'M5'"),
                       ({"element": "Fe"}, "does not contain the Fe K edge"),
                       ({"units": "furlongs"}, "energy units")]:
        p.write_text(_xdi_text(energy, cols, **bad))
        with pytest.raises(InputError, match=match):
            read_xdi(p)
    p.write_text(_xdi_text(energy / 1000, cols))  # keV numbers labelled eV
    with pytest.raises(InputError, match="look like keV"):
        read_xdi(p)
    p.write_text(_xdi_text(energy, cols).replace("# Element.symbol: Cu\n", ""))
    with pytest.raises(InputError, match="Element.symbol"):
        read_xdi(p)
    p.write_text("energy mu\n1 2\n")
    with pytest.raises(InputError, match="not an XDI file"):
        read_xdi(p)


def test_xdi_angle_column_converted_with_d_spacing(tmp_path):
    d = 3.13555
    e_fe = tabulated_edge_energy("Fe", "K")
    energy = np.linspace(e_fe - 80, e_fe + 150, 100)
    angle = np.degrees(np.arcsin(12398.419843320026 / (2 * d * energy)))
    text = _xdi_text(angle, {"mutrans": _edge_mu(energy, e_fe)}, element="Fe", units="degrees",
                     extra=f"# Mono.d_spacing: {d}").replace("Column.1: energy", "Column.1: angle")
    p = tmp_path / "angle.xdi"
    p.write_text(text)
    rec = read_xdi(p)
    assert rec.metadata["energy_from"] == "mono angle"
    np.testing.assert_allclose(rec.energies, energy, atol=0.2)  # angle printed to 1e-4 deg


def test_duplicate_energies_merged_decreasing_rejected(tmp_path):
    e_cu = tabulated_edge_energy("Cu", "K")
    energy = np.linspace(e_cu - 60, e_cu + 100, 80)
    mu = _edge_mu(energy, e_cu)
    rows = [f"{a:.3f},{b:.6f}" for a, b in zip(energy, mu)]
    p = tmp_path / "dup.csv"
    p.write_text("energy,mu\n" + "\n".join(rows[:40] + [rows[39]] + rows[40:]) + "\n")
    rec = read_two_column(p, absorber="Cu")
    assert rec.metadata["merged_duplicate_energies"] == 1
    assert rec.metadata["columns"] == ["energy", "mu"] and len(rec.energies) == 80
    p.write_text("\n".join(rows[:40] + [rows[45]] + rows[40:]) + "\n")
    with pytest.raises(InputError, match="below the previous point") as exc:
        read_two_column(p, absorber="Cu")
    assert exc.value.source.endswith(":42")  # the line after the misplaced row


# --------------------------------------------------------------------------- sniffing / misc


@needs_shared
def test_read_spectrum_file_sniffs_formats(tmp_path):
    assert read_spectrum_file(XASLIB / "uploadtest.xdi").source == "xdi"
    assert read_spectrum_file(FEFF9_XMU).source == "feff9"
    with pytest.raises(InputError, match="header says Fe"):
        read_spectrum_file(XASLIB / "uploadtest.xdi", absorber="Cu")
    e_ni = tabulated_edge_energy("Ni", "K")
    energy = np.linspace(e_ni - 50, e_ni + 400, 300)
    p = tmp_path / "ni.txt"
    np.savetxt(p, np.c_[energy, _edge_mu(energy, e_ni)], header="Ni foil")
    with pytest.raises(InputError, match="absorbing element is not recorded"):
        read_spectrum_file(p)
    rec = read_spectrum_file(p, absorber="Ni")
    assert (rec.source, rec.kind, rec.absorber) == ("file", "EXAFS", "Ni")
    (tmp_path / "empty.dat").write_text("  \n")
    (tmp_path / "bin.dat").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    for name, match in [("empty.dat", "empty"), ("bin.dat", "binary"), ("missing", "not found")]:
        with pytest.raises(InputError, match=match):
            read_spectrum_file(tmp_path / name, absorber="Ni")


def test_normalize_validation():
    e = np.linspace(8900, 9200, 200)
    mu = _edge_mu(e, 8979, step=2.5, pre=(1.0, -2e-3))
    e0, step, norm = normalize(e, mu)
    assert e0 == pytest.approx(8979, abs=1.5) and step == pytest.approx(2.5, rel=0.05)
    assert norm[e > e0 + 40].mean() == pytest.approx(1.0, abs=0.05)
    bad = [
        ((e[::-1], mu[::-1]), {}, "strictly increasing"),
        ((e, np.where(e > 9000, np.nan, mu)), {}, "non-finite"),
        ((e[:5], mu[:5]), {}, "only 5 points"),
        ((e, -mu), {}, "no positive edge step"),
        ((e, mu), {"e0": 9500.0}, "outside the data range"),
        ((e[e < 8990], mu[e < 8990]), {"e0": 8979.0}, "need >= 20 eV"),
        ((e[e > 8977], mu[e > 8977]), {"e0": 8979.0}, "before the edge"),
        ((e, np.ones_like(e)), {"calculated": True}, "no edge found"),
        ((e, -_edge_mu(e, 8979)), {"calculated": True, "e0": 8979.0}, "no positive edge step"),
    ]
    for args, kw, match in bad:
        with pytest.raises(InputError, match=match):
            normalize(*args, source="unit", **kw)


# ------------------------------------------------------------------------------ structures


@needs_shared
def test_structures_poscar_named_by_folder():
    got = read_structures(CU_FEFF9 / "mp-1005792")
    assert [n for n, _ in got] == ["mp-1005792"]
    assert got[0][1].composition.reduced_formula == "Sm2CuAs3O"
    assert len(got[0][1]) == 28


def test_structures_formats_and_names(tmp_path):
    from ase.io import write as ase_write
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    cu = Structure(Lattice.cubic(3.615), ["Cu"] * 4,
                   [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    CifWriter(nacl).write_file(tmp_path / "nacl.cif")
    cu.to(filename=str(tmp_path / "cu.vasp"), fmt="poscar")
    (tmp_path / "sub").mkdir()
    cu.to(filename=str(tmp_path / "sub" / "POSCAR"), fmt="poscar")
    (tmp_path / "two.json").write_text(json.dumps([nacl.as_dict(), cu.as_dict()]))
    (tmp_path / "one.json").write_text(json.dumps({"structure": cu.as_dict(), "energy": -1}))
    ase_write(tmp_path / "frames.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in (cu, nacl)],
              format="extxyz")
    (tmp_path / "notes.txt").write_text("not a structure, skipped in folders")
    got = dict(read_structures(tmp_path))
    assert sorted(got) == ["cu", "frames#0", "frames#1", "nacl", "one", "sub", "two#0", "two#1"]
    for name, ref in [("nacl", nacl), ("cu", cu), ("sub", cu), ("two#0", nacl), ("one", cu),
                      ("frames#1", nacl)]:
        assert got[name].composition == ref.composition, name
        assert got[name].lattice.abc == pytest.approx(ref.lattice.abc, abs=1e-4)
    # a CIF with two data blocks
    (tmp_path / "multi.cif").write_text(str(CifWriter(nacl)) + "\n" + str(CifWriter(cu)))
    assert [n for n, _ in read_structures(tmp_path / "multi.cif")] == ["multi#0", "multi#1"]


def test_structures_bad_files(tmp_path):
    from pymatgen.core import Lattice, Structure

    cases = {
        "broken.cif": "data_x\n_cell_length_a 3.6\nloop_\n_atom_site_label\n garbage ( [\n",
        "bad.json": "{not json",
        "wrong.json": json.dumps({"a": 1}),
        "POSCAR": "Cu\n1.0\n3.6 0 0\n0 3.6\n",
        "mol.xyz": "2\nmolecule\nC 0 0 0\nO 0 0 1.1\n",
        "notes.txt": "hello",
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(InputError) as exc:
            read_structures(p)
        assert name in exc.value.source
    overlap = Structure(Lattice.cubic(4.0), ["Cu", "Cu"], [[0, 0, 0], [0.01, 0, 0]])
    overlap.to(filename=str(tmp_path / "overlap.vasp"), fmt="poscar")
    with pytest.raises(InputError, match="apart"):
        read_structures(tmp_path / "overlap.vasp")
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(InputError, match="no structure files"):
        read_structures(empty)
    with pytest.raises(InputError, match="no such file"):
        read_structures(tmp_path / "absent")


# ---------------------------------------------------------------------------- property tests

K_ABSORBERS = ["Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Se", "Sr"]


@st.composite
def spectra(draw, *, calculated=False):
    """A physically shaped spectrum on a beamline-like grid (coarse pre-edge, fine edge, coarser
    post-edge, jittered): arctan edge, sloped baseline, EXAFS-like wiggle, noise."""
    el = draw(st.sampled_from(K_ABSORBERS))
    e0 = tabulated_edge_energy(el, "K") + draw(st.floats(-5, 10))
    pre = 12.0 if calculated else draw(st.floats(40, 200))
    post = draw(st.floats(60, 900))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    grid, e = [], e0 - pre
    steps = {"pre": draw(st.floats(0.5, 10)), "edge": draw(st.floats(0.1, 1.0)),
             "post": draw(st.floats(0.5, 5))}
    while e < e0 + post:
        grid.append(e)
        region = "pre" if e < e0 - 20 else "edge" if e < e0 + 30 else "post"
        e += steps[region] * rng.uniform(0.5, 1.5)  # >= 0.05 eV: distinct after printing
    energy = np.array(grid)
    step = draw(st.floats(0.05, 5.0)) if not calculated else 1.0
    # baseline slope per eV relative to the step: transmission backgrounds fall by up to about
    # half a step per 100 eV (thick or dilute samples)
    base = (0.0, 0.0) if calculated else (draw(st.floats(-1, 3)), step * draw(st.floats(-5e-3, 2e-3)))
    mu = _edge_mu(energy, e0, step=step, pre=base, wiggle=draw(st.floats(0, 0.1)))
    mu = mu + draw(st.floats(0, 1e-3)) * step * rng.standard_normal(energy.size)
    return el, e0, step, energy, mu


def _print_two_column(energy, mu, sep):
    return "# energy mu\n" + "\n".join(f"{e:.4f}{sep}{m:.8e}" for e, m in zip(energy, mu)) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=spectra(), sep=st.sampled_from([" ", "\t", ", ", ";"]))
def test_two_column_round_trip(tmp_path, spec, sep):
    el, e0_true, step, energy, mu = spec
    p = tmp_path / "spec.dat"
    text = _print_two_column(energy, mu, sep)
    p.write_text(text)
    rec = read_two_column(p, absorber=el)
    printed = np.array([[float(x) for x in ln.replace(",", " ").replace(";", " ").split()]
                        for ln in text.splitlines()[1:]])
    np.testing.assert_array_equal(rec.energies, printed[:, 0])  # exactly what was printed
    np.testing.assert_array_equal(rec.mu, printed[:, 1])
    np.testing.assert_allclose(rec.energies, energy, atol=5e-5)  # within print precision
    np.testing.assert_allclose(rec.mu, mu, rtol=1e-8, atol=1e-12)
    assert rec.mu_norm is not None, rec.metadata.get("normalize_error")
    assert abs(rec.e0 - e0_true) < 3.0
    assert rec.edge_step == pytest.approx(step, rel=0.25)  # measured: 99th pct 13 %
    assert rec.kind == ("EXAFS" if energy[-1] - rec.e0 > 300 else "XANES")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=spectra(calculated=True))
def test_xmu_round_trip(tmp_path, spec):
    el, e0_true, _, energy, mu = spec
    from pymatgen.core.periodic_table import Element

    p = _write_xmu(tmp_path / "xmu.dat", energy, mu, e0=e0_true, version="FEFF 10.0.0",
                   z=Element(el).Z)
    rec = read_feff_xmu(p)
    table = np.loadtxt(p)
    np.testing.assert_array_equal(rec.energies, table[:, 0])
    np.testing.assert_array_equal(rec.mu, table[:, 3])
    np.testing.assert_allclose(rec.energies, energy, atol=5e-4)
    np.testing.assert_allclose(rec.mu, mu, rtol=1e-5, atol=1e-9)
    assert (rec.absorber, rec.source) == (el, "feff10")
    # e0_true is where the file's e column is 0; E0 is where k = 0 (Fermi level, 4 eV below)
    assert rec.metadata["edge_energy_feff_ev"] == pytest.approx(e0_true, abs=2e-3)
    i = np.searchsorted(energy, e0_true - 4.0)
    assert abs(rec.e0 - (e0_true - 4.0)) <= energy[i] - energy[i - 1] + 2e-3
    assert rec.kind == ("EXAFS" if energy[-1] - rec.e0 >= 200 else "XANES")
    assert rec.mu_norm is not None and rec.edge_step == pytest.approx(1.0, rel=0.25)


def _valid_text(fmt, el, e0, energy, mu):
    if fmt == "two_column":
        return _print_two_column(energy, mu, " ")
    if fmt == "xdi":
        i0 = 1e5 * (1 + 0.01 * np.sin(energy))
        return _xdi_text(energy, {"itrans": i0 * np.exp(-mu), "i0": i0}, element=el)
    from pymatgen.core.periodic_table import Element

    return _xmu_text(energy, mu, e0=e0, z=Element(el).Z)


def _data_lines(lines):
    return [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]


# garbage: no line breaks or '#' (a token replaced by '#...' legitimately becomes a comment in
# two-column files), and at least one byte that cannot be part of a number or a separator
GARBAGE = st.binary(min_size=1, max_size=8).filter(
    lambda b: not set(b) & set(b"\n\r#")
    and any(chr(c) not in "0123456789.+-eEdD \t,;" for c in b)
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=spectra(calculated=True),
    fmt=st.sampled_from(["two_column", "xdi", "xmu"]),
    corruption=st.sampled_from(["nonfinite", "swap", "shuffle", "truncate", "garbage"]),
    data=st.data(),
)
def test_corruption_always_raises_input_error(tmp_path, spec, fmt, corruption, data):
    el, e0, _, energy, mu = spec
    lines = _valid_text(fmt, el, e0, energy, mu).split("\n")
    rows = _data_lines(lines)
    i = data.draw(st.sampled_from(rows), label="row")
    toks = lines[i].split()
    if corruption == "nonfinite":
        j = data.draw(st.integers(0, len(toks) - 1), label="col")
        toks[j] = data.draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999"]))
        lines[i] = " ".join(toks)
    elif corruption == "swap":
        j = data.draw(st.sampled_from([r for r in rows if r != i]), label="other")
        lines[i], lines[j] = lines[j], lines[i]
    elif corruption == "shuffle":
        perm = data.draw(st.permutations(rows), label="perm")
        assume(list(perm) != rows)
        block = [lines[r] for r in perm]
        for r, text in zip(rows, block):
            lines[r] = text
    elif corruption == "truncate":
        cut = data.draw(st.integers(1, len(toks) - 1), label="keep")
        lines[i] = " ".join(toks[:cut])
    raw = "\n".join(lines).encode()
    if corruption == "garbage":
        j = data.draw(st.integers(0, len(toks) - 1), label="col")
        toks_b = [t.encode() for t in toks]
        toks_b[j] = data.draw(GARBAGE, label="garbage")
        lines_b = [ln.encode() for ln in lines]
        lines_b[i] = b" ".join(toks_b)
        raw = b"\n".join(lines_b)
    p = tmp_path / {"two_column": "s.dat", "xdi": "s.xdi", "xmu": "xmu.dat"}[fmt]
    p.write_bytes(raw)
    with pytest.raises(InputError):
        if fmt == "two_column":
            read_two_column(p, absorber=el)
        elif fmt == "xdi":
            read_xdi(p)
        else:
            read_feff_xmu(p)
    with pytest.raises(InputError):  # and through the sniffer
        read_spectrum_file(p, absorber=el)
