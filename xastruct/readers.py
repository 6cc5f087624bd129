"""Readers for spectra (FEFF xmu.dat/chi.dat, XDI, plain two-column text) and crystal structures.

Every reader returns fully validated data or raises :class:`~xastruct.errors.InputError` naming the
file (and line) and the fix; no reader returns a partial record. Spectra come back as
:class:`SpectrumRecord` with absolute energies in eV, the raw mu as read, and an edge-step
normalized copy from :func:`normalize` (xraylarch's ``preedge`` with data-adaptive fit ranges).

Decisions worth knowing (details next to the code):

* Energies must increase. Rows repeating the previous energy exactly (common at scan-region
  boundaries) are merged by averaging; any decrease is an error naming the line, because sorting
  would silently interleave separate sweeps.
* Non-finite values are errors only in the columns actually used.
* A failed normalization (e.g. no edge step in a reference channel) is not fatal for a reader:
  the record keeps ``mu_norm=None`` and ``metadata['normalize_error']`` says why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xastruct.errors import InputError

EDGES = ("K", "L1", "L2", "L3")
KINDS = ("XANES", "EXAFS")
MIN_POINTS = 10
# normalize() needs this much data above E0 to fit a post-edge line at all.
MIN_POST_EDGE_EV = 20.0
# Pre-edge windows narrower than this give a poorly conditioned line when extrapolated to E0,
# so a constant is fitted instead.
MIN_LINEAR_PRE_EDGE_EV = 15.0
# half-width of the E0 search window around the tabulated edge energy (see normalize)
E0_SEARCH_EV = 60.0
# Kind thresholds (data extent above E0): FEFF FMS XANES runs end ~130 eV above the edge and
# EXAFS runs reach k ~ 20 (1500 eV); measured XANES scans rarely go past ~250 eV.
FEFF_EXAFS_ABOVE_EV = 200.0
XDI_EXAFS_ABOVE_EV = 300.0
# hc in eV*Angstrom, for XDI files recorded in monochromator angle.
HC_EV_ANGSTROM = 12398.419843320026

_ROMAN_EDGES = {"LI": "L1", "LII": "L2", "LIII": "L3", "L1": "L1", "L2": "L2", "L3": "L3", "K": "K"}

_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eEdD][+-]?\d+)?|nan|inf|infinity)", re.ASCII | re.IGNORECASE
)
# ASCII separators only: a stray unicode space or control byte inside a row is corruption
_SPLIT = re.compile(r"[ \t,;]+")
_ROW = re.compile(rf"(?:{_NUMBER.pattern})(?:[ \t,;]+(?:{_NUMBER.pattern}))*[ \t,;]*", re.ASCII | re.I)


@dataclass
class SpectrumRecord:
    """One spectrum as read: what the store needs, plus where it came from."""

    energies: np.ndarray  # absolute photon energy, eV, strictly increasing
    mu: np.ndarray  # raw mu(E) as read or computed from the detector channels
    absorber: str  # element symbol
    edge: str  # K, L1, L2, L3
    kind: str  # XANES or EXAFS
    source: str  # feff9, feff8l, feff10, feff6l, xdi, mp, file
    e0: float | None = None
    mu_norm: np.ndarray | None = None  # edge-step normalized mu, None if normalization failed
    k: np.ndarray | None = None
    chi: np.ndarray | None = None
    sample_name: str | None = None
    metadata: dict = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None
    site_index: int | None = None
    edge_step: float | None = None

    def __post_init__(self):
        self.energies = np.asarray(self.energies, dtype=float)
        self.mu = np.asarray(self.mu, dtype=float)
        if self.energies.shape != self.mu.shape or self.energies.ndim != 1:
            raise ValueError(
                f"energies {self.energies.shape} and mu {self.mu.shape} must be 1-D and equal length"
            )
        if self.mu_norm is not None:
            self.mu_norm = np.asarray(self.mu_norm, dtype=float)


# --------------------------------------------------------------------------------------------
# validation helpers


def check_element(source: str, symbol) -> str:
    """Return the canonical element symbol or raise InputError."""
    from pymatgen.core.periodic_table import Element

    sym = str(symbol).strip()
    sym = sym[:1].upper() + sym[1:].lower()
    if not sym or not Element.is_valid_symbol(sym):
        raise InputError(
            source,
            f"unknown element {str(symbol).strip()!r}",
            "give the absorbing element as a chemical symbol, e.g. Cu",
        )
    return sym


def check_edge(source: str, edge) -> str:
    """Return the canonical edge name (K, L1, L2, L3) or raise InputError."""
    key = str(edge).strip().upper().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _ROMAN_EDGES:
        raise InputError(
            source,
            f"unsupported edge {str(edge).strip()!r}",
            f"XAStruct handles the {', '.join(EDGES)} edges",
        )
    return _ROMAN_EDGES[key]


def check_kind(source: str, kind) -> str:
    k = str(kind).strip().upper()
    if k not in KINDS:
        raise InputError(source, f"unknown spectrum kind {kind!r}", "use XANES or EXAFS")
    return k


@functools.lru_cache(maxsize=512)
def tabulated_edge_energy(absorber: str, edge: str) -> float | None:
    """Edge energy in eV from xraydb (Elam tables), None if the element has no such edge."""
    import xraydb

    try:
        rec = xraydb.xray_edge(absorber, edge)
    except Exception:  # xraydb raises on elements it does not tabulate
        return None
    return None if rec is None else float(rec.energy)


def _check_edge_in_range(source: str, energies: np.ndarray, absorber: str, edge: str) -> float:
    """The data must bracket the absorber's edge; catches wrong element/edge/units early."""
    e_tab = tabulated_edge_energy(absorber, edge)
    if e_tab is None:
        raise InputError(
            source, f"{absorber} has no tabulated {edge} edge", "check the element and edge"
        )
    # generous: calibration offsets and FEFF's absolute-energy error are tens of eV
    tol = max(50.0, 0.01 * e_tab)
    lo, hi = float(energies[0]), float(energies[-1])
    if lo - tol <= e_tab <= hi + tol:
        return e_tab
    fix = f"check the element/edge, or the energy units (expected eV around {e_tab:.0f})"
    if lo * 1000 - tol <= e_tab <= hi * 1000 + tol:
        fix = "the energies look like keV; convert them to eV"
    raise InputError(
        source,
        f"energy range {lo:.1f}-{hi:.1f} eV does not contain the {absorber} {edge} edge "
        f"({e_tab:.0f} eV)",
        fix,
    )


def _validated_xy(source: str, energies, mu) -> tuple[np.ndarray, np.ndarray]:
    """Finite, 1-D, equal-length, enough points, strictly increasing energies."""
    try:
        e = np.asarray(energies, dtype=float)
        m = np.asarray(mu, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(source, f"energies/mu are not numeric arrays ({exc})") from None
    if e.ndim != 1 or m.ndim != 1 or e.shape != m.shape:
        raise InputError(
            source, f"energies {e.shape} and mu {m.shape} must be 1-D arrays of equal length"
        )
    if e.size < MIN_POINTS:
        raise InputError(
            source, f"only {e.size} points", f"a spectrum needs at least {MIN_POINTS} points"
        )
    for name, arr in (("energy", e), ("mu", m)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(
                source,
                f"{name} has {bad.size} non-finite value(s) (NaN/inf), first at point {bad[0]}",
                "remove or repair those points",
            )
    steps = np.diff(e)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise InputError(
            source,
            f"energies not strictly increasing at point {i} ({e[i - 1]:.4f} then {e[i]:.4f} eV)",
            "sort the points and remove repeated energies",
        )
    return e, m


# --------------------------------------------------------------------------------------------
# normalization


def _max_derivative_e0(e: np.ndarray, m: np.ndarray) -> float:
    # Noise-free theory spectra: the steepest point of the edge. (larch's find_e0_calc does the
    # same but breaks under numpy>=2 when the maximum is not unique.)
    d = np.gradient(m, e)
    return float(e[int(np.argmax(d))])


def normalize(
    energies,
    mu,
    *,
    e0: float | None = None,
    source: str = "",
    calculated: bool = False,
    edge_energy: float | None = None,
) -> tuple[float, float, np.ndarray]:
    """Edge-step normalize mu(E); returns ``(e0, edge_step, mu_norm)``.

    Uses xraylarch's functional ``larch.xafs.pre_edge.preedge`` (plain numpy, no larch session;
    ~1 ms per spectrum) with fit ranges chosen from the data range, because larch's defaults
    assume a measured scan starting >=100 eV below the edge. On FEFF XANES (which starts ~12 eV
    below E0, on the already-rising broadened edge) the default pre-edge line is fitted to the
    edge itself and the "normalized" post-edge comes out at -10 to -100 instead of 1.

    Ranges (relative to E0):

    * pre-edge: from the second point (the first is often a glitch) to half way to E0. A line if
      that window is >= 15 eV wide with >= 5 points, otherwise a constant (the mean of mu there).
    * post-edge: from 20 % of the post-edge span, at least 25 eV (larch's default; keeps big
      white lines such as sulfate S K out of the fit) and at most 150 eV (Athena's EXAFS
      default) or half the span, to the last point; polynomial degree 2/1/0 for windows
      >300/>30/shorter eV (larch's rule).

    ``calculated=True`` (FEFF, Materials Project): the baseline is zero by construction (the
    calculation contains only the absorber's edge), so no pre-edge is fitted. This also covers
    FEFF EXAFS runs, which start at the Fermi level with no pre-edge data at all.

    E0: given, else the steepest point (calculated) or larch's ``find_e0`` (measured, robust to
    glitches). ``edge_energy`` (the tabulated edge, readers pass it) restricts that search to
    +-60 eV around it: find_e0 distrusts an edge lying in the first 5 % of the points and then
    lands 5-10 eV high on scans with a short pre-edge and a long, dense EXAFS region. 60 eV
    covers chemical shifts and the worst calibration offset in the XAS library (36 eV, Sr).
    The edge step is the post-edge minus pre-edge curve at E0 and must be positive.
    """
    src = source or "spectrum"
    e, m = _validated_xy(src, energies, mu)
    if e0 is None:
        if calculated:
            e0 = _max_derivative_e0(e, m)
            if e0 in (e[0], e[-1]):
                raise InputError(
                    src, "no edge found: mu does not rise anywhere inside the data range",
                    "check that the file holds data across the absorption edge",
                )  # fmt: skip
        else:
            from larch.xafs.pre_edge import find_e0

            win = slice(None)
            if edge_energy is not None:
                near = np.abs(e - edge_energy) <= E0_SEARCH_EV
                if near.sum() >= MIN_POINTS:
                    win = near
            try:
                with warnings.catch_warnings():
                    # larch's step estimate takes the mean of an empty slice below ~100 points
                    warnings.simplefilter("ignore", RuntimeWarning)
                    e0 = float(find_e0(e[win], m[win]))
            except Exception as exc:  # larch raises bare numpy errors on pathological data
                raise InputError(src, f"could not locate the edge (E0): {exc}") from None
    e0 = float(e0)
    # FEFF EXAFS output starts exactly at E0 (the Fermi level): allowed for calculated spectra
    if not math.isfinite(e0) or not (e[0] <= e0 if calculated else e[0] < e0) or not e0 < e[-1]:
        raise InputError(
            src,
            f"E0 = {e0} eV is outside the data range {e[0]:.2f}-{e[-1]:.2f} eV",
            "check E0, or that the file holds data across the edge",
        )
    post_span = float(e[-1] - e0)
    if post_span < MIN_POST_EDGE_EV:
        raise InputError(
            src,
            f"data end {post_span:.1f} eV above E0 = {e0:.2f} eV; "
            f"need >= {MIN_POST_EDGE_EV:.0f} eV to measure the edge step",
            "use a scan that extends further above the edge",
        )
    norm2 = post_span
    norm1 = min(150.0, max(25.0, 0.2 * post_span), 0.5 * post_span)
    nnorm = 2 if norm2 - norm1 > 300 else 1 if norm2 - norm1 > 30 else 0
    ie0 = int(np.argmin(np.abs(e - e0)))

    if calculated:
        sel = (e >= e0 + norm1) & (e <= e0 + norm2)
        if sel.sum() < nnorm + 2:
            nnorm = 0
        coefs = np.polyfit(e[sel], m[sel], nnorm)
        step = float(np.polyval(coefs, e[ie0]))
        norm = m / step if step > 0 else m
    else:
        def n_in(lo, hi):
            return int(((e - e0 >= lo) & (e - e0 <= hi)).sum())

        pre1 = float(e[1] - e0)
        pre2 = 0.5 * pre1
        if n_in(pre1, pre2) < 3:  # coarse pre-edge grid: use the first point after all
            pre1 = float(e[0] - e0)
        if n_in(pre1, pre2) < 2:  # ... and come closer to the edge, but not onto it
            pre2 = -5.0
        n_pre = n_in(pre1, pre2)
        if pre1 > -5.0 or n_pre < 2:
            raise InputError(
                src,
                f"only {n_pre} point(s) before the edge (data start {e0 - e[0]:.1f} eV below "
                f"E0 = {e0:.2f} eV)",
                "measured spectra need pre-edge points to set the baseline",
            )
        npre = 1 if (pre2 - pre1 >= MIN_LINEAR_PRE_EDGE_EV and n_pre >= 3) else 0
        from larch.xafs.pre_edge import preedge

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # polyfit RankWarning on tiny windows
                out = preedge(
                    e, m, e0=e0, pre1=pre1, pre2=pre2, npre=npre,
                    norm1=norm1, norm2=norm2, nnorm=nnorm,
                )  # fmt: skip
        except Exception as exc:
            raise InputError(src, f"pre-edge/post-edge fit failed: {exc}") from None
        # larch reports abs(step); the sign tells us whether mu actually rises across the edge
        step = float(out["post_edge"][ie0] - out["pre_edge"][ie0])
        norm = np.asarray(out["norm"], dtype=float)
    scale = float(np.ptp(m)) or 1.0
    if not math.isfinite(step) or step <= 1e-6 * scale:
        raise InputError(
            src,
            f"no positive edge step at E0 = {e0:.2f} eV (step = {step:.3g})",
            "check that mu rises across the edge (wrong column, sign, or element/edge?)",
        )
    if not np.isfinite(norm).all():
        raise InputError(src, "normalization produced non-finite values")
    return e0, step, norm


def _try_normalize(record_kw: dict, source: str, *, e0=None, calculated=False) -> None:
    """Fill e0/edge_step/mu_norm in place; a failure is recorded, not raised (see module doc)."""
    try:
        e0n, step, norm = normalize(
            record_kw["energies"], record_kw["mu"], e0=e0, source=source, calculated=calculated,
            edge_energy=tabulated_edge_energy(record_kw["absorber"], record_kw["edge"]),
        )
    except InputError as exc:
        record_kw["metadata"]["normalize_error"] = exc.problem
        record_kw.update(e0=e0, edge_step=None, mu_norm=None)
        return
    if e0 is None:  # E0 definitions differ by source; say which one this record uses
        record_kw["metadata"].setdefault(
            "e0_definition",
            "steepest point, max dmu/dE" if calculated
            else "larch find_e0 (max of smoothed dmu/dE near the tabulated edge)",
        )
    record_kw.update(e0=e0n, edge_step=step, mu_norm=norm)


# --------------------------------------------------------------------------------------------
# text / table parsing


def _read_text(path) -> tuple[Path, bytes, str]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(str(p), "file not found", "check the path") from None
    except IsADirectoryError:
        raise InputError(str(p), "is a directory, expected a file") from None
    except OSError as exc:
        raise InputError(str(p), f"cannot read file ({exc.strerror or exc})") from None
    if not raw.strip():
        raise InputError(str(p), "file is empty")
    if b"\x00" in raw[:8192]:
        raise InputError(str(p), "binary file, not a text spectrum", "export the data as text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old beamline headers; latin-1 never fails
    return p, raw, text


def _lines(text: str) -> list[str]:
    # split on '\n' only: str.splitlines() would also break on \x0b, \x1c, \u2028 ... inside rows
    return [ln.rstrip("\r") for ln in text.split("\n")]


def _parse_rows(
    src: str, rows: list[tuple[int, str]], *, ncols: int | None = None, min_cols: int = 2
) -> np.ndarray:
    """Parse numbered text rows into a float table; every row must have the same column count."""
    if not rows:
        raise InputError(src, "no data rows found", "the file needs numeric data below its header")
    flat: list[str] = []
    for lineno, line in rows:
        s = line.strip()
        # str.split() is 5x faster; _ROW below still rejects any non-ASCII/control separator
        toks = s.split() if ("," not in s and ";" not in s) else [t for t in _SPLIT.split(s) if t]
        if ncols is None:
            if len(toks) < min_cols:
                raise InputError(
                    f"{src}:{lineno}",
                    f"expected at least {min_cols} columns, found {len(toks)}",
                    "check the delimiter (whitespace or comma) and the file format",
                )
            ncols = len(toks)
        elif len(toks) != ncols:
            raise InputError(
                f"{src}:{lineno}",
                f"expected {ncols} values, found {len(toks)} (truncated or malformed line)",
                "repair or remove this line",
            )
        if not _ROW.fullmatch(s):  # one regex per row; find the culprit only on failure
            bad = next((t for t in toks if not _NUMBER.fullmatch(t)), s)
            raise InputError(
                f"{src}:{lineno}",
                f"{bad[:40]!r} is not a number",
                "repair or remove this line (comments must start with '#')",
            )
        if "d" in s or "D" in s:  # Fortran double-precision exponent
            toks = [t.replace("d", "e").replace("D", "e") for t in toks]
        flat.extend(toks)
    return np.array(flat, dtype=float).reshape(len(rows), ncols)


def _require_finite(src: str, linenos: np.ndarray, col: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
        raise InputError(
            f"{src}:{int(linenos[bad[0]])}",
            f"{name} is {col[bad[0]]} ({bad.size} non-finite value(s) in this column)",
            "remove or repair those rows",
        )


def _monotonic_merge(
    src: str, linenos: np.ndarray, energy: np.ndarray, cols: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Check energies increase; merge exact repeats by averaging. Returns (energy, cols, n_merged)."""
    d = np.diff(energy)
    bad = np.flatnonzero(d < 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise InputError(
            f"{src}:{int(linenos[i])}",
            f"energy {energy[i]:.4f} eV is below the previous point ({energy[i - 1]:.4f} eV); "
            "energies must increase",
            "sort the rows, or split separate sweeps into separate files",
        )
    dup = d == 0
    if not dup.any():
        return energy, cols, 0
    group = np.concatenate([[0], np.cumsum(~dup)])  # rows with equal energy share a group id
    counts = np.bincount(group)
    merged = [np.bincount(group, weights=c) / counts for c in cols]
    return np.bincount(group, weights=energy) / counts, merged, int(dup.sum())


def _check_min_points(src: str, n: int) -> None:
    if n < MIN_POINTS:
        raise InputError(
            src, f"only {n} data points", f"a spectrum needs at least {MIN_POINTS} points"
        )


# --------------------------------------------------------------------------------------------
# FEFF


_FEFF_VERSION = re.compile(r"\bfeff\s*(\d+)(?:\s*\.\d+)*\s*(l)?", re.IGNORECASE)
_FEFF_ABS = re.compile(r"Abs\s+Z=\s*(\d+).*?\b([A-Z]\d?)\s+shell", re.IGNORECASE)
_FEFF_POT = re.compile(r"Pot\s+\d+\s+Z=\s*(\d+)", re.IGNORECASE)
_FEFF_KV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?)")
_SITE_DIR = re.compile(r"^(\d+)_([A-Z][a-z]?)$")


def _feff_source(header: list[str]) -> tuple[str, str | None]:
    for line in header:
        mt = _FEFF_VERSION.search(line)
        if mt:
            major, lite = mt.group(1), mt.group(2)
            return f"feff{major}{'l' if lite else ''}", mt.group(0).strip()
    return "feff", None


def _feff_header_metadata(header: list[str]) -> dict:
    """FEFF writes 'key= value' pairs all over its header; keep the physics-relevant ones."""
    meta: dict = {}
    pots = []
    for line in header:
        body = re.sub(r"^[#\s]+", "", line)  # FEFF9/10 prefix lines with '# #'
        if _FEFF_POT.match(body):
            pots.append(int(_FEFF_POT.match(body).group(1)))
            continue
        if body.upper().startswith("POT "):
            meta["pot"] = body[4:].strip()
        if "paths used" in body:
            mt = re.search(r"(\d+)\s*/\s*(\d+)\s+paths used", body)
            if mt:
                meta["paths_used"] = int(mt.group(1))
        if body.startswith("xsedge"):
            nums = re.findall(r"[-+]?\d+\.\d+[eE][-+]?\d+", body)
            if nums:
                meta["xsedge_norm"] = float(nums[-1])
        if body.startswith("Abs"):
            continue  # Z, Rmt of the absorber: handled by the caller
        for key, val in _FEFF_KV.findall(body):
            k = key.lower()
            k = {"mu": "fermi_level_ev", "vint": "vint_ev"}.get(k, k)
            meta.setdefault(k, float(val.replace("D", "E").replace("d", "e")))
    if pots:
        meta["potentials_z"] = pots
    return meta


def _split_header(lines: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """Leading '#' lines are the header; later '#' lines inside the data are an error."""
    header, rows = [], []
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#") and not rows:
            header.append(s)
        else:
            rows.append((i, s))
    return header, rows


def _no_comments_in_data(src: str, rows: list[tuple[int, str]]) -> None:
    for lineno, s in rows:
        if s.startswith("#"):
            raise InputError(
                f"{src}:{lineno}",
                "comment line inside the data block",
                "header lines must all come before the data",
            )


def read_feff_xmu(
    path,
    *,
    absorber: str | None = None,
    edge: str | None = None,
    kind: str | None = None,
    source: str | None = None,
    site_index: int | None = None,
) -> SpectrumRecord:
    """Read a FEFF ``xmu.dat`` (columns omega e k mu mu0 chi).

    * absorber/edge come from the header line ``Abs Z=29 ... K shell``; arguments that
      contradict the header are an error.
    * source from the version string: FEFF 9.9.1 -> feff9, Feff8L -> feff8l, FEFF 10 -> feff10.
    * E0 is FEFF's Fermi level, the energy where the ``k`` column is 0 (``xastruct.feff.xmu_e0``,
      the definition simulated FEFF runs use, so stored FEFF spectra align whatever their
      origin). It is the absorption threshold of FEFF's one-electron picture: noise-free, no
      fit, and it keeps FEFF's chemical shift. It sits on the foot of the edge, below the
      steepest point; ``omega - e`` (FEFF's e = 0, ~8 eV higher, median |diff| to the steepest
      point 3.6 eV on 967 Cu K FEFF9 files) is kept as ``metadata['edge_energy_feff_ev']``.
    * mu from FEFF is already normalized to the edge step (at xsedge+50 eV); ``mu_norm`` is
      still computed by :func:`normalize` (zero baseline) so every source is treated alike.
    * kind: EXAFS if the data extend >= 200 eV above E0, else XANES, unless given.
    * k/chi are kept for EXAFS runs only (for FMS XANES chi is just mu - mu0).
    * site_index: given, else parsed from a parent folder named ``<index>_<Element>``
      (layout of the FEFF-XANES trees, e.g. ``008_Cu`` -> 8), else None.
    """
    p, raw, text = _read_text(path)
    src = str(p)
    header, rows = _split_header(_lines(text))
    if not header:
        raise InputError(src, "no FEFF header ('#' lines) found", "is this a FEFF xmu.dat?")
    _no_comments_in_data(src, rows)
    labels = None
    for h in header:
        words = h.lstrip("#").split()
        if words[:2] == ["omega", "e"]:
            labels = words
    if labels is not None and labels[:6] != ["omega", "e", "k", "mu", "mu0", "chi"]:
        raise InputError(
            src, f"unexpected FEFF columns {labels[:6]}", "expected omega e k mu mu0 chi"
        )
    table = _parse_rows(src, rows, min_cols=6)
    if table.shape[1] != 6:
        raise InputError(
            src,
            f"FEFF xmu.dat has 6 columns (omega e k mu mu0 chi), found {table.shape[1]}",
            "is this a FEFF xmu.dat?",
        )
    linenos = np.array([n for n, _ in rows])
    names = ["omega", "e", "k", "mu", "mu0", "chi"]
    for j, name in enumerate(names):
        _require_finite(src, linenos, table[:, j], name)
    omega, e_rel, k, mu, _, chi = table.T
    omega, (e_rel, k, mu, chi), n_merged = _monotonic_merge(src, linenos, omega, [e_rel, k, mu, chi])
    _check_min_points(src, omega.size)

    hdr_abs = None
    for h in header:
        mt = _FEFF_ABS.search(h)
        if mt:
            hdr_abs = (int(mt.group(1)), mt.group(2).upper())
            break
    meta: dict = {"format": "feff_xmu"}
    src_code, version = _feff_source(header)
    if version:
        meta["feff_version"] = version
    meta.update(_feff_header_metadata(header))
    if n_merged:
        meta["merged_duplicate_energies"] = n_merged

    from pymatgen.core.periodic_table import Element

    if hdr_abs is not None:
        z, shell = hdr_abs
        try:
            hdr_el = Element.from_Z(z).symbol
        except ValueError:
            raise InputError(src, f"header gives absorber Z={z}, not an element") from None
        hdr_edge = check_edge(src, shell)
        meta["absorber_z"] = z
        if absorber is not None and check_element(src, absorber) != hdr_el:
            raise InputError(
                src,
                f"absorber {absorber!r} was given but the FEFF header says Z={z} ({hdr_el})",
                "drop the absorber argument or pick the right file",
            )
        if edge is not None and check_edge(src, edge) != hdr_edge:
            raise InputError(
                src,
                f"edge {edge!r} was given but the FEFF header says {hdr_edge}",
                "drop the edge argument or pick the right file",
            )
        absorber, edge = hdr_el, hdr_edge
    else:
        if absorber is None:
            raise InputError(
                src,
                "the header has no 'Abs Z=... shell' line, so the absorber is unknown",
                "pass absorber= (and edge=)",
            )
        absorber = check_element(src, absorber)
        edge = check_edge(src, edge or "K")

    # omega - e is constant in a genuine file (FEFF's e column is omega minus a fixed offset)
    offsets = omega - e_rel
    e_offset = float(np.median(offsets))
    spread = float(np.max(np.abs(offsets - e_offset)))
    if spread > 0.05:
        raise InputError(
            src,
            f"omega - e varies by {spread:.3f} eV between rows (expected constant)",
            "the e or omega column is corrupt; rerun FEFF",
        )
    bad = np.flatnonzero(np.diff(k) < 0)
    if bad.size:
        raise InputError(
            f"{src}:{int(linenos[bad[0] + 1])}", "the k column decreases",
            "the k column is corrupt; rerun FEFF",
        )  # fmt: skip
    from xastruct.feff import xmu_e0

    # E0 = FEFF's Fermi level (k = 0): the one definition used for simulated FEFF runs too
    e0 = xmu_e0(np.column_stack([omega, e_rel, k]))
    meta["e0_definition"] = "FEFF Fermi level (k = 0)"
    meta["edge_energy_feff_ev"] = e_offset  # where FEFF's e column is 0
    _check_edge_in_range(src, omega, absorber, edge)

    if kind is None:
        kind = "EXAFS" if omega[-1] - e0 >= FEFF_EXAFS_ABOVE_EV else "XANES"
    kind = check_kind(src, kind)

    if site_index is None:
        mt = _SITE_DIR.match(p.parent.name)
        if mt:
            if mt.group(2) != absorber:
                raise InputError(
                    src,
                    f"folder {p.parent.name!r} names {mt.group(2)} but the header says {absorber}",
                    "the file is in the wrong folder",
                )
            site_index = int(mt.group(1))
    kw = dict(
        energies=omega,
        mu=mu,
        absorber=absorber,
        edge=edge,
        kind=kind,
        source=source or src_code,
        k=k if kind == "EXAFS" else None,
        chi=chi if kind == "EXAFS" else None,
        sample_name=None,
        metadata=meta,
        path=src,
        sha256=hashlib.sha256(raw).hexdigest(),
        site_index=site_index,
    )
    _try_normalize(kw, src, e0=e0, calculated=True)
    return SpectrumRecord(**kw)


def read_feff_chi(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a FEFF ``chi.dat`` (columns k chi mag phase); returns ``(k, chi)``."""
    p, _, text = _read_text(path)
    src = str(p)
    header, rows = _split_header(_lines(text))
    _no_comments_in_data(src, rows)
    table = _parse_rows(src, rows, min_cols=2)
    linenos = np.array([n for n, _ in rows])
    k, chi = table[:, 0], table[:, 1]
    _require_finite(src, linenos, k, "k")
    _require_finite(src, linenos, chi, "chi")
    bad = np.flatnonzero(np.diff(k) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise InputError(
            f"{src}:{int(linenos[i])}",
            f"k = {k[i]} does not increase (previous {k[i - 1]})",
            "k must be strictly increasing; rerun FEFF",
        )
    if k[0] < 0:
        raise InputError(f"{src}:{int(linenos[0])}", f"negative k = {k[0]}", "k must be >= 0")
    _check_min_points(src, k.size)
    return k, chi


# --------------------------------------------------------------------------------------------
# XDI

_XDI_FIELD = re.compile(r"^#\s*([A-Za-z][\w]*)\.([\w.\-]+)\s*:\s*(.*)$")
_ENERGY_UNITS = {"ev": 1.0, "kev": 1000.0}
_PREFER = ("auto", "mu", "transmission", "fluorescence")


def _xdi_mu(src, cols: dict, linenos, prefer: str) -> tuple[np.ndarray, str]:
    """Pick mu per the XDI column conventions; returns (mu, description)."""

    def ratio_ok(num, den, what):
        for name, arr in ((num, cols[num]), (den, cols[den])):
            _require_finite(src, linenos, arr, name)
        bad = np.flatnonzero(cols[den] == 0)
        if bad.size:
            raise InputError(
                f"{src}:{int(linenos[bad[0]])}", f"{den} is 0, cannot compute {what}",
                "remove the rows with zero monitor counts",
            )  # fmt: skip

    def trans():
        if "mutrans" in cols:
            return cols["mutrans"], "mutrans"
        if "itrans" in cols and "i0" in cols:
            ratio_ok("itrans", "i0", "-ln(itrans/i0)")
            r = cols["itrans"] / cols["i0"]
            bad = np.flatnonzero(r <= 0)
            if bad.size:
                raise InputError(
                    f"{src}:{int(linenos[bad[0]])}",
                    "itrans/i0 <= 0, cannot take the logarithm",
                    "use the fluorescence channel (prefer='fluorescence') or repair the counts",
                )
            return -np.log(r), "-ln(itrans/i0)"
        return None

    def fluor():
        if "mufluor" in cols:
            return cols["mufluor"], "mufluor"
        if "ifluor" in cols and "i0" in cols:
            ratio_ok("ifluor", "i0", "ifluor/i0")
            return cols["ifluor"] / cols["i0"], "ifluor/i0"
        return None

    def generic():
        return (cols["mu"], "mu") if "mu" in cols else None

    order = {
        "auto": [generic, trans, fluor],
        "mu": [generic],
        "transmission": [trans],
        "fluorescence": [fluor],
    }[prefer]
    for pick in order:
        got = pick()
        if got is not None:
            return got
    wanted = {
        "auto": "mu, mutrans, mufluor, itrans+i0 or ifluor+i0",
        "mu": "mu",
        "transmission": "mutrans or itrans+i0",
        "fluorescence": "mufluor or ifluor+i0",
    }[prefer]
    raise InputError(
        src,
        f"no usable absorption column (looked for {wanted}; have {', '.join(cols)})",
        "label the columns per XDI (Column.N: mutrans / itrans / i0 ...)"
        + ("" if prefer == "auto" else " or use prefer='auto'"),
    )


def read_xdi(path, *, prefer: str = "auto") -> SpectrumRecord:
    """Read an XDI 1.0/1.1 file (any extension).

    mu, by ``prefer``: 'auto' takes a ``mu`` column, else mutrans, else -ln(itrans/i0), else
    mufluor, else ifluor/i0; 'transmission'/'fluorescence'/'mu' restrict to those. What was used
    goes to ``metadata['mu_from']``. All header fields land in ``metadata`` as lower-case
    ``family.key`` (XDI names are case-insensitive), with any ``|| PV`` address stripped.
    Parsed here rather than with larch.io.read_xdi because larch accepts truncated rows silently
    (numpy fills them) and reports no line numbers.
    """
    if prefer not in _PREFER:
        raise ValueError(f"prefer must be one of {_PREFER}, not {prefer!r}")
    p, raw, text = _read_text(path)
    src = str(p)
    lines = _lines(text)
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    mt = re.match(r"#\s*XDI/(\S+)(.*)", first)
    if not mt:
        raise InputError(
            src,
            "not an XDI file (first line must be '# XDI/1.0 ...')",
            "use read_spectrum_file for other formats",
        )
    meta: dict = {"format": "xdi", "xdi_version": mt.group(1)}
    if mt.group(2).strip():
        meta["xdi_applications"] = mt.group(2).strip()
    header, rows = _split_header(lines)
    _no_comments_in_data(src, rows)

    columns: dict[int, tuple[str, str]] = {}
    comments: list[str] = []
    label_line = None
    state = "fields"  # fields -> comments (after '///') -> labels (after '#---')
    for h in header[1:]:
        if re.match(r"#\s*-{3,}", h):
            state = "labels"
            continue
        if re.match(r"#\s*///", h):
            state = "comments"
            continue
        if state == "labels":
            label_line = h.lstrip("#").split()
            continue
        fm = _XDI_FIELD.match(h)
        if state == "fields" and fm:
            family, key, value = fm.group(1).lower(), fm.group(2).lower(), fm.group(3).strip()
            value = value.split("||")[0].strip()
            if family == "column" and key.isdigit():
                words = value.split()
                if not words:
                    raise InputError(src, f"Column.{key} has no name", "name every column")
                columns[int(key)] = (words[0].lower(), words[1] if len(words) > 1 else "")
            else:
                meta.setdefault(f"{family}.{key}", value)  # a repeated field: first one wins
        elif state == "comments":
            comments.append(h.lstrip("#").strip())
    if comments:
        meta["comments"] = "\n".join(c for c in comments if c)

    table = _parse_rows(src, rows, min_cols=2)
    linenos = np.array([n for n, _ in rows])
    ncols = table.shape[1]
    if columns:
        if max(columns) > ncols:
            raise InputError(
                src,
                f"header declares Column.{max(columns)} but data rows have {ncols} values",
                "fix the Column.N lines or the data",
            )
        names = {i - 1: nu for i, nu in columns.items()}
    elif label_line and len(label_line) == ncols:
        names = {i: (w.lower(), "") for i, w in enumerate(label_line)}
    else:
        raise InputError(src, "no column labels (Column.N fields)", "add '# Column.1: energy eV' etc.")
    cols = {name: table[:, i] for i, (name, _) in sorted(names.items(), reverse=True)}
    units = {name: u for _, (name, u) in sorted(names.items(), reverse=True)}
    meta["columns"] = [names[i][0] if i in names else f"col{i + 1}" for i in range(ncols)]

    if "element.symbol" not in meta:
        raise InputError(
            src, "missing 'Element.symbol' header", "add '# Element.symbol: Cu' to the header"
        )
    if "element.edge" not in meta:
        raise InputError(src, "missing 'Element.edge' header", "add '# Element.edge: K'")
    absorber = check_element(src, meta["element.symbol"])
    edge = check_edge(src, meta["element.edge"])

    if "energy" in cols:
        unit = units["energy"] or "eV"
        if unit.lower() not in _ENERGY_UNITS:
            raise InputError(src, f"energy units {unit!r} not understood", "use eV or keV")
        _require_finite(src, linenos, cols["energy"], "energy")
        energy = cols["energy"] * _ENERGY_UNITS[unit.lower()]
    elif "angle" in cols:
        dsp = meta.get("mono.d_spacing")
        try:
            d = float(str(dsp).split()[0])
        except (TypeError, ValueError, IndexError):
            raise InputError(
                src, "energy is given as mono angle but Mono.d_spacing is missing/invalid",
                "add '# Mono.d_spacing: 3.13555' (Angstrom)",
            ) from None  # fmt: skip
        unit = (units["angle"] or "degrees").lower()
        ang = cols["angle"] if unit.startswith("rad") else np.deg2rad(cols["angle"])
        _require_finite(src, linenos, ang, "angle")
        with np.errstate(divide="ignore"):
            energy = HC_EV_ANGSTROM / (2 * d * np.sin(ang))
        meta["energy_from"] = "mono angle"
        # energy falls as angle rises: reverse so energies increase
        if energy.size > 1 and energy[-1] < energy[0]:
            order = slice(None, None, -1)
            energy, linenos = energy[order], linenos[order]
            cols = {n: c[order] for n, c in cols.items()}
    else:
        raise InputError(src, "no 'energy' (or 'angle') column", "label Column.1 as 'energy eV'")
    _require_finite(src, linenos, energy, "energy")

    mu, mu_from = _xdi_mu(src, cols, linenos, prefer)
    _require_finite(src, linenos, mu, mu_from)
    meta["mu_from"] = mu_from
    energy, (mu,), n_merged = _monotonic_merge(src, linenos, energy, [mu])
    if n_merged:
        meta["merged_duplicate_energies"] = n_merged
    _check_min_points(src, energy.size)
    e_tab = _check_edge_in_range(src, energy, absorber, edge)
    meta["edge_energy_tabulated_ev"] = e_tab

    sample = meta.get("sample.name") or meta.get("sample.formula") or p.stem
    kw = dict(
        energies=energy,
        mu=mu,
        absorber=absorber,
        edge=edge,
        kind="XANES",
        source="xdi",
        sample_name=sample,
        metadata=meta,
        path=src,
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    _try_normalize(kw, src)
    ref = kw["e0"] if kw["e0"] is not None else e_tab
    kw["kind"] = "EXAFS" if energy[-1] - ref > XDI_EXAFS_ABOVE_EV else "XANES"
    return SpectrumRecord(**kw)


# --------------------------------------------------------------------------------------------
# plain text


def read_two_column(path, *, absorber: str, edge: str = "K", kind: str | None = None) -> SpectrumRecord:
    """Read energy (eV) and mu from the first two columns of a text file.

    Separators: whitespace, comma or semicolon. Lines starting with '#' are comments anywhere;
    one leading line of column labels (e.g. ``energy,mu``) is allowed. Extra columns must be
    numeric too and are ignored. kind: EXAFS if data extend > 300 eV above E0, unless given.
    """
    p, raw, text = _read_text(path)
    src = str(p)
    absorber = check_element(src, absorber)
    edge = check_edge(src, edge)
    rows = []
    labels = None
    for i, line in enumerate(_lines(text), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not rows and labels is None:
            toks = [t for t in _SPLIT.split(s) if t]
            if toks and not any(_NUMBER.fullmatch(t) for t in toks) and all(
                re.fullmatch(r"[A-Za-z_][\w()/.\-]*", t) for t in toks
            ):
                labels = toks
                continue
        rows.append((i, s))
    table = _parse_rows(src, rows, min_cols=2)
    linenos = np.array([n for n, _ in rows])
    energy, mu = table[:, 0], table[:, 1]
    _require_finite(src, linenos, energy, "energy")
    _require_finite(src, linenos, mu, "mu")
    energy, (mu,), n_merged = _monotonic_merge(src, linenos, energy, [mu])
    _check_min_points(src, energy.size)
    e_tab = _check_edge_in_range(src, energy, absorber, edge)
    meta: dict = {"format": "two_column", "n_columns": int(table.shape[1])}
    if labels:
        meta["columns"] = labels
    if n_merged:
        meta["merged_duplicate_energies"] = n_merged
    kw = dict(
        energies=energy,
        mu=mu,
        absorber=absorber,
        edge=edge,
        kind="XANES",
        source="file",
        sample_name=p.stem,
        metadata=meta,
        path=src,
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    _try_normalize(kw, src)
    if kind is None:
        ref = kw["e0"] if kw["e0"] is not None else e_tab
        kind = "EXAFS" if energy[-1] - ref > XDI_EXAFS_ABOVE_EV else "XANES"
    kw["kind"] = check_kind(src, kind)
    return SpectrumRecord(**kw)


def read_spectrum_file(path, *, absorber: str | None = None, edge: str | None = None) -> SpectrumRecord:
    """Sniff the format (XDI, FEFF xmu.dat, plain columns) and read with the matching reader.

    absorber/edge are required only for plain columns; for XDI and FEFF they are checked
    against the file's header.
    """
    p, _, text = _read_text(path)
    src = str(p)
    lines = _lines(text[:65536])
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if re.match(r"#\s*XDI/", first):
        rec = read_xdi(p)
        if absorber is not None and check_element(src, absorber) != rec.absorber:
            raise InputError(
                src, f"absorber {absorber!r} given but the XDI header says {rec.absorber}",
                "drop the absorber argument or fix Element.symbol",
            )  # fmt: skip
        if edge is not None and check_edge(src, edge) != rec.edge:
            raise InputError(
                src, f"edge {edge!r} given but the XDI header says {rec.edge}",
                "drop the edge argument or fix Element.edge",
            )  # fmt: skip
        return rec
    comments = [ln.strip() for ln in lines if ln.strip().startswith("#")]
    header = [c.lstrip("#").split() for c in comments]
    if any(w[:4] == ["k", "chi", "mag", "phase"] for w in header):
        raise InputError(
            src,
            "this is a FEFF chi.dat: chi(k) only, no mu(E)",
            "read the xmu.dat next to it, or use read_feff_chi for chi(k)",
        )
    # the column-label line, or failing that FEFF's version stamp (FEFF writes it on line 1)
    if any(w[:4] == ["omega", "e", "k", "mu"] for w in header) or (
        comments and first.startswith("#") and _FEFF_VERSION.search(first)
    ):
        return read_feff_xmu(p, absorber=absorber, edge=edge)
    if absorber is None:
        raise InputError(
            src,
            "plain column file: the absorbing element is not recorded in it",
            "pass the absorber (e.g. --absorber Cu) and edge, or convert the file to XDI",
        )
    return read_two_column(p, absorber=absorber, edge=edge or "K")


# --------------------------------------------------------------------------------------------
# structures

_CIF = (".cif", ".mcif")
_POSCAR_NAMES = ("POSCAR", "CONTCAR")
_JSON = (".json",)
_XYZ = (".extxyz", ".xyz")
# sites closer than this are a corrupt/duplicated structure, not chemistry
MIN_SITE_DISTANCE = 0.5


def _structure_kind(p: Path) -> str | None:
    name, suffix = p.name, p.suffix.lower()
    if suffix in _CIF:
        return "cif"
    if suffix == ".vasp" or any(name.upper().startswith(n) for n in _POSCAR_NAMES):
        return "poscar"
    if suffix in _JSON:
        return "json"
    if suffix in _XYZ:
        return "extxyz"
    return None


def _structures_from_json(src: str, text: str) -> list:
    from pymatgen.core import Structure

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(src, f"invalid JSON ({exc})") from None
    items = data if isinstance(data, list) else [data]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "sites" not in item and isinstance(item.get("structure"), dict):
            item = item["structure"]  # e.g. a ComputedStructureEntry or MP document
        if not (isinstance(item, dict) and "lattice" in item and "sites" in item):
            raise InputError(
                src,
                f"JSON item {i} is not a pymatgen Structure dict (needs 'lattice' and 'sites')",
                "write structures with json.dump(structure.as_dict(), f)",
            )
        try:
            out.append(Structure.from_dict(item))
        except Exception as exc:
            raise InputError(src, f"JSON item {i}: not a valid Structure ({exc})") from None
    return out


def _read_structure_file(p: Path, kind: str) -> list:
    from pymatgen.core import Structure

    src = str(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns freely about CIF quirks
            if kind == "cif":
                from pymatgen.io.cif import CifParser

                # primitive=False keeps the cell as written, so site indices match the file
                structs = CifParser(src).parse_structures(primitive=False, on_error="raise")
            elif kind == "poscar":
                structs = [Structure.from_file(src)]
            elif kind == "json":
                structs = _structures_from_json(src, p.read_text(errors="replace"))
            else:
                import ase.io
                from pymatgen.io.ase import AseAtomsAdaptor

                atoms_list = ase.io.read(src, index=":", format="extxyz")
                structs = []
                for i, atoms in enumerate(atoms_list):
                    if not atoms.pbc.all() or atoms.cell.rank < 3:
                        raise InputError(
                            src,
                            f"frame {i} has no periodic 3-D cell (molecule?)",
                            "add Lattice=\"...\" and pbc=\"T T T\" to the extxyz comment line",
                        )
                    structs.append(AseAtomsAdaptor.get_structure(atoms))
    except InputError:
        raise
    except Exception as exc:  # parsers raise ValueError, IndexError, KeyError ... on bad files
        raise InputError(src, f"cannot parse as {kind}: {type(exc).__name__}: {exc}",
                         "check the file is a valid, uncorrupted structure file") from None
    if not structs:
        raise InputError(src, f"no structures found in this {kind} file")
    for i, s in enumerate(structs):
        tag = f" (structure {i})" if len(structs) > 1 else ""
        if len(s) == 0:
            raise InputError(src, f"structure has no sites{tag}")
        if s.lattice.volume <= 1e-6 or not np.isfinite(s.lattice.matrix).all():
            raise InputError(src, f"degenerate or non-finite lattice{tag}")
        if len(s) > 1:
            dm = s.distance_matrix
            np.fill_diagonal(dm, np.inf)
            i_, j_ = np.unravel_index(int(np.argmin(dm)), dm.shape)
            if dm[i_, j_] < MIN_SITE_DISTANCE:
                raise InputError(
                    src,
                    f"sites {i_} and {j_} are only {dm[i_, j_]:.3f} A apart{tag}",
                    "the file has duplicated or corrupt coordinates",
                )
    return structs


def read_structures(path) -> list[tuple[str, "Structure"]]:  # noqa: F821
    """Read one structure file, or every structure file under a folder (recursively, sorted).

    Formats: CIF, POSCAR/CONTCAR/*.vasp, pymatgen JSON (a Structure.as_dict(), a list of them,
    or dicts with a 'structure' entry), extxyz (via ASE; periodic frames only). Names are the
    file stem, ``stem#i`` for multi-structure files, and the parent folder name for POSCAR/
    CONTCAR (e.g. ``materials/mp-1005792/POSCAR`` -> ``mp-1005792``); clashing names fall back
    to the path relative to the folder. In a folder, files of other types are skipped; a folder
    with no structure files, or any unreadable structure file, is an InputError.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(str(root), "no such file or folder", "check the path")
    if root.is_dir():
        files = sorted(
            f for f in root.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
            and _structure_kind(f) is not None
        )  # fmt: skip
        if not files:
            raise InputError(
                str(root),
                "no structure files found",
                "expected *.cif, POSCAR/CONTCAR, *.vasp, *.json or *.extxyz",
            )
    else:
        if _structure_kind(root) is None:
            raise InputError(
                str(root),
                "unrecognized structure file type",
                "use .cif, POSCAR/CONTCAR/.vasp, .json (pymatgen) or .extxyz",
            )
        files = [root]
    out: list = []
    seen: set[str] = set()
    for f in files:
        structs = _read_structure_file(f, _structure_kind(f))
        is_poscar = _structure_kind(f) == "poscar" and f.suffix.lower() != ".vasp"
        base = f.parent.name if is_poscar and f.parent.name else f.stem
        if base in seen and root.is_dir():
            base = f.relative_to(root).with_suffix("").as_posix()
        seen.add(base)
        if len(structs) == 1:
            out.append((base, structs[0]))
        else:
            out.extend((f"{base}#{i}", s) for i, s in enumerate(structs))
    return out
