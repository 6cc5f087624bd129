"""FEFF inputs and runs: absorber clusters, feff.inp text, feff8l EXAFS and FEFF10 XANES.

Everything here is a pure function of its arguments so the lead's orchestration (simulate.py) can
call it from dask / multiprocessing workers. FEFF itself always runs in a child process (its
Fortran code can crash, hang, and writes into the current directory), inside a scratch directory
of its own, under a timeout that kills the whole process group.

Codes:
  * EXAFS -> feff8l, the executables shipped inside the xraylarch wheel (larch/bin/<platform>).
  * XANES -> FEFF10 through the feff10-rs bindings (full multiple scattering, SCF, core hole).

We write feff.inp ourselves instead of using larch's structure2feffinp, which reorders sites and
often centres the cluster on a different site than the one requested.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

from xastruct.errors import InputError, XAStructError

EDGES = ("K", "L1", "L2", "L3")
KINDS = ("EXAFS", "XANES")
CODE_FOR_KIND = {"EXAFS": "feff8l", "XANES": "feff10"}

# Defaults per (code, kind); the lead stores the resolved dict (resolve_params) as provenance.
# Chosen with benchmarks/feff_convergence.py (see benchmarks/results/feff_convergence.md).
DEFAULT_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("feff8l", "EXAFS"): {
        "cluster_radius": 7.0,  # > rpath so every atom of every path <= rpath is in the list
        "rpath": 6.0,
        "kmax": 16.0,
        "s02": 0.9,  # a typical measured amplitude reduction, so amplitudes resemble experiment
        "sig2": 0.004,  # global Debye-Waller factor (the DEBYE card is broken in feff8l)
        "nleg": 4,
        "criteria": (4.0, 2.5),
    },
    ("feff10", "XANES"): {
        # MPXANESSet cards (Materials Project) with radii and core hole measured against the FEFF 9.9.1
        # spectra in cu_k_feff9: SCF is essential, the RPA-screened core hole (their header says
        # "screened core-hole") halves the MAE of FSR, and with RPA FMS 4 left 3-5 eV edge shifts.
        "cluster_radius": 7.0,  # must cover the FMS sphere; atoms beyond it only cost time
        "fms_radius": 5.0,
        "scf": True,
        "scf_radius": 4.0,
        "scf_iterations": 30,
        "scf_mix": 0.2,
        "corehole": "RPA",
        "s02": 0.0,  # 0 asks FEFF to compute S02 from atomic overlap, as MP did
        "exchange": (0, 0.0, 0.0, 2),
        # kmax 6.0 A^-1 reaches ~+130 eV like MP's spectra (FEFF's default stops near +50 eV).
        "xanes": (6.0, 0.04, 0.1),
    },
}

DEFAULT_TIMEOUT = {"EXAFS": 120.0, "XANES": 900.0}

# Below this an "edge" is a valence level (H K 13.6 eV, B L3 4.7 eV): FEFF has no core hole to model.
MIN_EDGE_EV = 25.0
# xraydb has edge data up to Cf (98).
MAX_Z = 98
# Closer than this two atoms overlap; FEFF's muffin tins then blow up with an obscure message.
MIN_PAIR_DISTANCE = 0.5
# FEFF needs at least one scatterer besides the absorber.
MIN_CLUSTER_ATOMS = 2
# feff8l is compiled for ipot 0..11 ("ipot must be between 0 and 11"); FEFF10 ran with 15 here, and
# anything it refuses comes back as a failed job with FEFF's own message.
MAX_IPOT = {"feff8l": 11}


class FeffRunError(XAStructError):
    """FEFF ran but failed (crash, timeout, missing or non-finite output)."""

    def __init__(self, reason: str, log_tail: str = "", timed_out: bool = False):
        self.reason = reason
        self.log_tail = log_tail
        self.timed_out = timed_out
        super().__init__(reason)


# ----------------------------------------------------------------------------- cluster


def _site_element(structure, idx: int, source: str):
    site = structure[idx]
    if not site.is_ordered:
        raise InputError(
            source,
            f"site {idx} is disordered ({site.species_string}); FEFF needs one element per site",
            "order the structure first (e.g. pymatgen OrderDisorderedStructureTransformation)",
        )
    from pymatgen.core import DummySpecies, Element

    sp = site.specie
    # DummySpecies (vacancies, "X") report a hash-like Z, so test the type, not Z
    if isinstance(sp, DummySpecies) or not isinstance(getattr(sp, "element", sp), Element):
        raise InputError(source, f"site {idx} holds {sp}, not a chemical element",
                         "remove dummy species/vacancies")
    return getattr(sp, "element", sp)


def absorber_cluster(structure, site_index: int, *, radius: float) -> tuple[np.ndarray, list[str]]:
    """All atoms within `radius` (A) of site `site_index`, periodic images included.

    Returns (coords, species): coords (N, 3) Cartesian A relative to the absorber, which is row 0 at
    the origin; species element symbols. Rows are sorted by distance, ties broken by symbol then
    coordinates so the same structure always gives the same text (and input hash).
    """
    from pymatgen.core import IStructure

    source = f"structure {getattr(structure, 'formula', structure)!s}"
    if not isinstance(structure, IStructure):  # Structure subclasses IStructure
        raise InputError(source, f"expected a pymatgen Structure, got {type(structure).__name__}")
    if isinstance(site_index, bool) or not isinstance(site_index, (int, np.integer)):
        raise InputError(source, f"site_index must be an integer, got {site_index!r}")
    if not 0 <= int(site_index) < len(structure):
        raise InputError(
            source, f"site_index {site_index} out of range (structure has {len(structure)} sites)",
            f"use a 0-based index in 0..{len(structure) - 1}",
        )
    if not radius or radius <= 0:
        raise InputError(source, f"cluster radius must be > 0 A, got {radius!r}")
    site_index = int(site_index)
    _site_element(structure, site_index, source)
    centre = structure[site_index].coords
    # A small margin so atoms sitting exactly on the sphere are not lost to float noise.
    neighbours = structure.get_sites_in_sphere(centre, radius + 1e-6, include_index=True)
    rows = []
    absorber_seen = False
    for nb in neighbours:
        if nb.nn_distance < 1e-6 and nb.index == site_index:
            absorber_seen = True
            continue
        el = _site_element(structure, nb.index, source).symbol
        rel = np.asarray(nb.coords) - centre
        rows.append((round(float(nb.nn_distance), 5), el, tuple(np.round(rel, 5)), rel))
    if not absorber_seen:  # pymatgen always returns the centre itself; guard against API drift
        raise XAStructError(f"{source}: absorber site {site_index} missing from its own sphere")
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    absorber_el = structure[site_index].specie.symbol
    coords = np.vstack([np.zeros(3)] + [r[3] for r in rows]) if rows else np.zeros((1, 3))
    species = [absorber_el] + [r[1] for r in rows]
    return coords, species


# ----------------------------------------------------------------------------- params / text


def resolve_params(kind: str, params: dict | None = None) -> dict[str, Any]:
    """Defaults for `kind` overlaid with `params`; unknown keys are refused (typos would be silent)."""
    kind = _check_kind(kind)
    defaults = DEFAULT_PARAMS[(CODE_FOR_KIND[kind], kind)]
    out = copy.deepcopy(defaults)
    for key, val in (params or {}).items():
        if key not in defaults:
            raise InputError(
                f"FEFF params ({kind})", f"unknown parameter {key!r}",
                f"use one of {sorted(defaults)}",
            )
        out[key] = val
    src = f"FEFF params ({kind})"
    for key in ("cluster_radius", "rpath", "fms_radius", "scf_radius", "kmax"):
        if key in out and not (isinstance(out[key], (int, float)) and out[key] > 0):
            raise InputError(src, f"{key} must be a positive number, got {out[key]!r}")
    if kind == "EXAFS" and out["rpath"] > out["cluster_radius"]:
        raise InputError(src, f"rpath {out['rpath']} exceeds cluster_radius {out['cluster_radius']}",
                         "raise cluster_radius to at least rpath")
    if kind == "XANES":
        if out["fms_radius"] > out["cluster_radius"]:
            raise InputError(src, f"fms_radius {out['fms_radius']} exceeds cluster_radius "
                             f"{out['cluster_radius']}", "raise cluster_radius to at least fms_radius")
        if out["scf"] and out["scf_radius"] > out["cluster_radius"]:
            raise InputError(src, "scf_radius exceeds cluster_radius", "raise cluster_radius")
    return out


def _check_kind(kind: str) -> str:
    k = str(kind).upper()
    if k not in KINDS:
        raise InputError("FEFF job", f"kind {kind!r} is not one of {KINDS}")
    return k


def _check_edge(element, edge: str, source: str) -> str:
    import xraydb

    e = str(edge).upper()
    if e not in EDGES:
        raise InputError(source, f"edge {edge!r} is not supported", f"use one of {EDGES}")
    if element.Z > MAX_Z:
        raise InputError(source, f"{element.symbol} (Z={element.Z}) is beyond the tabulated elements")
    info = xraydb.xray_edge(element.symbol, e)
    if info is None or info.energy < MIN_EDGE_EV:
        got = "no such level" if info is None else f"{info.energy} eV, a valence level"
        raise InputError(
            source, f"{element.symbol} has no {e} core level to absorb at ({got})",
            "pick a heavier absorber or another edge",
        )
    return e


def input_hash(text: str) -> str:
    """sha256 of feff.inp text, insensitive to trailing blanks and line-ending style."""
    norm = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))
    return hashlib.sha256(norm.encode()).hexdigest()


def write_feff_inp(
    structure,
    site_index: int,
    *,
    kind: str,
    edge: str = "K",
    radius: float | None = None,
    params: dict | None = None,
) -> str:
    """feff.inp text for the absorber at `site_index` (0-based into `structure`).

    kind 'EXAFS' -> feff8l cards, 'XANES' -> FEFF10 cards (see DEFAULT_PARAMS). `radius` overrides
    params['cluster_radius']. ipot 0 is the absorber; one ipot per other element in the cluster
    (the absorber's element gets its own ipot for the non-absorbing copies).
    """
    kind = _check_kind(kind)
    p = resolve_params(kind, {**(params or {}), **({} if radius is None else {"cluster_radius": radius})})
    coords, species = absorber_cluster(structure, site_index, radius=p["cluster_radius"])
    source = f"structure {structure.formula} site {site_index}"
    absorber = structure[int(site_index)].specie
    absorber = getattr(absorber, "element", absorber)
    edge = _check_edge(absorber, edge, source)

    if len(species) < MIN_CLUSTER_ATOMS:
        raise InputError(
            source, f"only {len(species)} atom(s) within {p['cluster_radius']} A of the absorber",
            "increase the cluster radius",
        )
    if len(coords) > 1:
        d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        d[np.diag_indices_from(d)] = np.inf
        if d.min() < MIN_PAIR_DISTANCE:
            raise InputError(source, f"two atoms are {d.min():.3f} A apart (overlapping sites)",
                             "check the structure for duplicated or misplaced atoms")

    from pymatgen.core import Element

    ipot_of: dict[str, int] = {}
    for el in species[1:]:  # order of first appearance: ipot 1 is the first-shell element
        if el not in ipot_of:
            ipot_of[el] = len(ipot_of) + 1
    code = CODE_FOR_KIND[kind]
    if code in MAX_IPOT and len(ipot_of) > MAX_IPOT[code]:
        raise InputError(source, f"{len(ipot_of)} scattering potentials in the cluster; {code} allows "
                         f"{MAX_IPOT[code]}", "reduce the cluster radius")
    counts = {el: species[1:].count(el) for el in ipot_of}

    lines = [
        f"TITLE {structure.composition.reduced_formula} site {int(site_index)} {absorber.symbol} "
        f"{edge}-edge {kind} ({code}) by xastruct",
        f"EDGE {edge}",
    ]
    if kind == "EXAFS":
        lines += [
            f"S02 {p['s02']}",
            "CONTROL 1 1 1 1 1 1",
            "PRINT 0 0 0 0 0 0",
            f"EXAFS {p['kmax']}",
            f"RPATH {p['rpath']}",
            f"SIG2 {p['sig2']}",
            f"NLEG {int(p['nleg'])}",
            "CRITERIA " + " ".join(str(c) for c in p["criteria"]),
        ]
    else:
        lines += [
            f"S02 {p['s02']}",
            f"COREHOLE {p['corehole']}",
            "CONTROL 1 1 1 1 1 1",
            "PRINT 1 0 0 0 0 0",
            "EXCHANGE " + " ".join(str(c) for c in p["exchange"]),
        ]
        if p["scf"]:
            lines.append(f"SCF {p['scf_radius']} 0 {int(p['scf_iterations'])} {p['scf_mix']} 1")
        lines += [
            f"FMS {p['fms_radius']} 0",
            "XANES " + " ".join(str(c) for c in p["xanes"]),
        ]
    lines += ["", "POTENTIALS", "*  ipot   Z  tag  lmax1  lmax2  stoichiometry"]
    # MP's convention: a token stoichiometry for the single absorber, cluster counts for the rest.
    lines.append(f"   0  {absorber.Z:3d}  {absorber.symbol:<3s}  -1  -1  0.0001")
    for el, ipot in ipot_of.items():
        lines.append(f"  {ipot:2d}  {Element(el).Z:3d}  {el:<3s}  -1  -1  {counts[el]}")
    lines += ["", "ATOMS", "*        x           y           z    ipot  tag      distance"]
    for i, (xyz, el) in enumerate(zip(coords, species)):
        ipot = 0 if i == 0 else ipot_of[el]
        dist = float(np.linalg.norm(xyz))
        x, y, z = (0.0 if abs(c) < 5e-6 else float(c) for c in xyz)  # no "-0.00000"
        lines.append(f"  {x:11.5f} {y:11.5f} {z:11.5f}  {ipot:3d}  {el:<3s}  {dist:10.5f}")
    lines += ["END", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running


def code_versions() -> dict[str, str]:
    """Versions of the FEFF carriers, for provenance (no heavy imports)."""
    out = {}
    for dist in ("xraylarch", "feff10-rs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _feff8l_bin_dir() -> Path:
    spec = util.find_spec("larch")
    if spec is None or not spec.submodule_search_locations:
        raise XAStructError("xraylarch is not installed; it ships the feff8l executables (pip install xraylarch)")
    plat = {"linux": "linux64", "darwin": "darwin64", "win32": "win64"}.get(sys.platform, "linux64")
    d = Path(list(spec.submodule_search_locations)[0]) / "bin" / plat
    exe = d / ("feff8l_pot.exe" if sys.platform == "win32" else "feff8l_pot")
    if not exe.exists():
        raise XAStructError(f"feff8l executables not found in {d}; reinstall xraylarch")
    return d


FEFF8L_MODULES = ("rdinp", "pot", "xsph", "pathfinder", "genfmt", "ff2x")


def _run_proc(argv: list[str], cwd: Path, log, deadline: float, env: dict | None, label: str) -> int:
    """Run argv in its own session; at the deadline kill the whole group (FEFF10 spawns workers)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FeffRunError(f"timeout reached before {label} started", timed_out=True)
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        return proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise FeffRunError(f"timeout: {label} killed when the time budget ran out", timed_out=True) from None


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _load_table(path: Path, ncols: int) -> np.ndarray:
    if not path.exists():
        raise FeffRunError(f"{path.name} was not written")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise FeffRunError(f"{path.name} is unreadable: {exc}") from None
    if data.shape[0] < 2 or data.shape[1] < ncols:
        raise FeffRunError(f"{path.name} has shape {data.shape}, expected >= {ncols} columns")
    if not np.all(np.isfinite(data[:, :ncols])):
        raise FeffRunError(f"{path.name} contains non-finite values")
    return data


# hbar^2 / (2 m_e) in eV A^2: E - E0 = K2E * k^2
K2E = 3.80998


def xmu_e0(xmu: np.ndarray) -> float:
    """Absorption threshold (FEFF's Fermi level): the energy where xmu.dat's k column is 0.

    Not omega - e: FEFF's e column is offset from the threshold by the Fermi level (Mu, -4..-9 eV).
    In XANES output k is signed (negative below E0) and increasing; EXAFS output starts at k = 0.
    """
    omega, k = xmu[:, 0], xmu[:, 2]
    if k[0] <= 0.0 <= k[-1]:
        return float(np.interp(0.0, k, omega))
    return float(omega[0] - K2E * k[0] ** 2)


def _single_threaded_env() -> dict:
    # One core per FEFF job: the scheduler decides parallelism, not OpenMP/BLAS inside FEFF.
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _kmax_of(text: str) -> float | None:
    m = re.search(r"^\s*EXAFS\s+([0-9.eE+-]+)", text, flags=re.M | re.I)
    return float(m.group(1)) if m else None


def run_feff8l_exafs(feff_inp_text: str, *, workdir, timeout: float = DEFAULT_TIMEOUT["EXAFS"]) -> dict:
    """Run the six feff8l modules in `workdir` (created if needed) as child processes.

    Returns dict(energies, mu, k, chi, e0, log_tail, seconds, code, code_version). chi is cut at the
    EXAFS kmax card (ff2x pads chi.dat to 20 A^-1). Raises FeffRunError on any failure.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "feff.inp").write_text(feff_inp_text)
    bindir = _feff8l_bin_dir()
    log_path = workdir / "feff8l.log"
    t0 = time.monotonic()
    deadline = t0 + timeout
    env = _single_threaded_env()
    with open(log_path, "w") as log:
        for mod in FEFF8L_MODULES:
            log.write(f"=== feff8l_{mod}\n")
            log.flush()
            rc = _run_proc([str(bindir / f"feff8l_{mod}")], workdir, log, deadline, env, f"feff8l_{mod}")
            if rc != 0:
                log.flush()
                raise FeffRunError(f"feff8l_{mod} exited with code {rc}", _tail(log_path))
    seconds = time.monotonic() - t0
    try:
        xmu = _load_table(workdir / "xmu.dat", 4)
        chi = _load_table(workdir / "chi.dat", 2)
    except FeffRunError as exc:
        exc.log_tail = _tail(log_path)
        raise
    kmax = _kmax_of(feff_inp_text)
    if kmax is not None:
        chi = chi[chi[:, 0] <= kmax + 1e-9]
    return {
        "energies": xmu[:, 0],
        "mu": xmu[:, 3],
        "k": chi[:, 0],
        "chi": chi[:, 1],
        "e0": xmu_e0(xmu),
        "log_tail": _tail(log_path),
        "seconds": seconds,
        "code": "feff8l",
        "code_version": f"xraylarch {code_versions()['xraylarch']}",
    }


# The child imports only feff10: it must not depend on xastruct being installed.
_FEFF10_CHILD = (
    "import sys, feff10\n"
    "r = feff10.run('feff.inp', '.')\n"
    "print('feff10 total seconds', r.total_duration_secs)\n"
)

_SCF_LINE = re.compile(r"^\s*SCF\b.*$\n?", flags=re.M | re.I)


def _feff10_once(text: str, workdir: Path, timeout: float) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "feff.inp").write_text(text)
    log_path = workdir / "feff10.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        rc = _run_proc([sys.executable, "-c", _FEFF10_CHILD], workdir, log, t0 + timeout,
                       _single_threaded_env(), "FEFF10")
    seconds = time.monotonic() - t0
    if rc != 0:
        said = _complaint(workdir)
        raise FeffRunError(f"FEFF10 exited with code {rc}" + (f" ({said})" if said else ""), _tail(log_path))
    try:
        xmu = _load_table(workdir / "xmu.dat", 4)
    except FeffRunError as exc:
        exc.log_tail = _tail(log_path)
        raise
    scf_requested = bool(_SCF_LINE.search(text))
    log1 = workdir / "log1.dat"
    scf_converged = None
    if scf_requested:
        scf_converged = log1.exists() and "convergence reached" in log1.read_text(errors="replace").lower()
    return {
        "energies": xmu[:, 0],
        "mu": xmu[:, 3],
        "k": xmu[:, 2],
        "e0": xmu_e0(xmu),
        "log_tail": _tail(log_path),
        "seconds": seconds,
        "scf_requested": scf_requested,
        "scf_converged": scf_converged,
    }


# FEFF's own words for why a run went wrong, to quote in the failure reason.
_FEFF_COMPLAINT = re.compile(r"bad counts[^\n]*|convergence not reached[^\n]*|severe \(\d+\)[^\n]*|"
                             r"stage '\w+' failed[^\n]*", flags=re.I)


def _complaint(workdir: Path) -> str:
    text = ""
    for name in ("feff10.log", "log1.dat"):
        try:
            text += (workdir / name).read_text(errors="replace") + "\n"
        except OSError:
            pass
    hits = list(dict.fromkeys(m.group(0).strip() for m in _FEFF_COMPLAINT.finditer(text)))
    return "; ".join(hits[:3])


def run_feff10_xanes(feff_inp_text: str, *, workdir, timeout: float = DEFAULT_TIMEOUT["XANES"]) -> dict:
    """Run FEFF10 (feff10-rs) on the text in `workdir`; returns dict(energies, mu, k, e0, ...).

    If the text has an SCF card and that run fails or its SCF does not converge, the job is rerun
    without SCF (in workdir/noscf) and the result carries scf_fallback=True, the first failure in
    scf_failure (with FEFF's complaint) and seconds covering both attempts. `timeout` applies to each
    attempt, so the worst case is about 2 x timeout. mu is FEFF's normalised mu (xsedge + 50 eV).
    """
    workdir = Path(workdir)
    versions = code_versions()
    meta = {"code": "feff10", "code_version": f"feff10-rs {versions['feff10-rs']}"}
    t0 = time.monotonic()
    try:
        res = _feff10_once(feff_inp_text, workdir, timeout)
        if not res["scf_requested"] or res["scf_converged"]:
            return {**res, **meta, "scf_fallback": False}
        failure = "SCF did not converge"
    except FeffRunError as exc:
        if not _SCF_LINE.search(feff_inp_text):
            raise
        failure = f"SCF run failed: {exc.reason}"
    said = _complaint(workdir)
    if said:
        failure += f" (FEFF: {said})"
    scf_seconds = time.monotonic() - t0
    res = _feff10_once(_SCF_LINE.sub("", feff_inp_text), workdir / "noscf", timeout)
    return {**res, **meta, "seconds": scf_seconds + res["seconds"], "scf_attempt_seconds": scf_seconds,
            "scf_fallback": True, "scf_failure": failure}


def _structure_from_job(obj):
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, dict):
        return Structure.from_dict(obj)
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        if not p.exists():
            raise InputError(str(p), "structure file does not exist")
        return Structure.from_file(str(p))
    raise InputError("FEFF job", f"cannot read a structure from {type(obj).__name__}",
                     "pass a pymatgen Structure, its as_dict(), or a POSCAR/CIF path")


def run_job(job: dict) -> dict:
    """Run one FEFF job in a fresh scratch dir; safe in dask/multiprocessing workers.

    job keys: kind ('EXAFS'|'XANES', required); either feff_inp (text) or structure (Structure,
    its as_dict(), or a file path) + site_index [+ edge, params, radius]; optional timeout (s),
    scratch_root (parent dir for the scratch dir), keep_workdir (bool), job_id (echoed back).

    Never raises: returns the run_* dict plus status='ok', input_hash, params, versions, or
    {'status': 'failed', 'reason': ..., 'error_type': 'input'|'feff'|'timeout'|'internal', ...}.
    """
    t0 = time.monotonic()
    out: dict[str, Any] = {"job_id": job.get("job_id"), "versions": code_versions()}
    workdir = None
    try:
        kind = _check_kind(job.get("kind", ""))
        out["kind"] = kind
        out["code"] = CODE_FOR_KIND[kind]
        if job.get("feff_inp"):
            text = str(job["feff_inp"])
            out["params"] = job.get("params")
        else:
            if "structure" not in job or "site_index" not in job:
                raise InputError("FEFF job", "needs feff_inp, or structure and site_index")
            structure = _structure_from_job(job["structure"])
            out["params"] = resolve_params(kind, job.get("params"))
            if job.get("radius") is not None:
                out["params"]["cluster_radius"] = job["radius"]
            out["edge"] = str(job.get("edge", "K")).upper()
            text = write_feff_inp(structure, job["site_index"], kind=kind, edge=out["edge"],
                                  radius=job.get("radius"), params=job.get("params"))
        out["input_hash"] = input_hash(text)
        timeout = float(job.get("timeout") or DEFAULT_TIMEOUT[kind])
        root = job.get("scratch_root")
        if root:
            Path(root).mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"feff_{kind.lower()}_", dir=root))
        runner = run_feff8l_exafs if kind == "EXAFS" else run_feff10_xanes
        res = runner(text, workdir=workdir, timeout=timeout)
        out.update(res)
        out["status"] = "ok"
    except InputError as exc:
        out.update(status="failed", error_type="input", reason=str(exc))
    except FeffRunError as exc:
        out.update(status="failed", error_type="timeout" if exc.timed_out else "feff",
                   reason=exc.reason, log_tail=exc.log_tail)
    except Exception as exc:  # a worker must report, not die: the job table records the reason
        out.update(status="failed", error_type="internal", reason=f"{type(exc).__name__}: {exc}")
    finally:
        if workdir is not None:
            if job.get("keep_workdir"):
                out["workdir"] = str(workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    out["wall_seconds"] = time.monotonic() - t0
    return out


def chi_r(k: np.ndarray, chi: np.ndarray, *, kmin: float = 3.0, kmax: float = 12.0,
          kweight: int = 2, dk: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """|chi(R)| via larch's xftf (Hanning window): returns (r, |chi(R)|) for quick checks."""
    from larch import Group
    from larch.xafs import xftf

    g = Group(k=np.asarray(k, float), chi=np.asarray(chi, float))
    xftf(g, kmin=kmin, kmax=kmax, kweight=kweight, dk=dk, window="hanning")
    return np.asarray(g.r), np.asarray(g.chir_mag)

