"""Built-in structure library: a periodic-table-wide set of small crystal structures.

Materials Project cannot be reached, so the default FEFF dataset is computed on structures this module
generates from data shipped inside pymatgen:

* the AFLOW prototype library (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``) and the
  example structures in ``pymatgen/util/structures/`` are the *prototypes*;
* each prototype's species are *decorated* with chemically plausible substitutes, ranked by the
  data-mined ionic substitution probabilities of Hautier et al. (pymatgen's ``lambda.json`` via
  :class:`SubstitutionProbability`), keeping charge balance for ionic prototypes and Hume-Rothery-like
  size/electronegativity rules for intermetallics;
* the lattice is rescaled by reference lattice scaling (the RLSVolumePredictor formula), then relaxed
  with CHGNet when the chemistry changed, and rejected if atoms overlap or the relax ran away.

Which decorations are kept is decided by a greedy coverage objective (every absorbing element in many
distinct local environments, no neighbour element dominating), so the library stays small enough for
FEFF on every inequivalent site. Generation: ``python -m xastruct.library`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import heapq
import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from itertools import product
from math import gcd
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xastruct.errors import InputError

DATA_PATH = Path(__file__).resolve().parent / "data" / "builtin_structures.json.gz"
FORMAT_NAME = "xastruct-structure-library"
FORMAT_VERSION = 1

NOBLE_GASES = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn"})
# H..Bi without noble gases (lanthanides are inside this range). Every element of every library
# structure is drawn from here, so every site is an absorber the FEFF dataset wants.
ABSORBER_ELEMENTS: tuple[str, ...] = tuple(
    sym
    for sym in (
        "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br "
        "Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho "
        "Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi"
    ).split()
    if sym not in NOBLE_GASES
)
_ABSORBERS = frozenset(ABSORBER_ELEMENTS)

# Anions a decoration may place on a negative site, with their usual charge.
ANION_CHARGE: dict[str, int] = {
    "H": -1, "F": -1, "Cl": -1, "Br": -1, "I": -1,
    "O": -2, "S": -2, "Se": -2, "Te": -2,
    "N": -3, "P": -3, "As": -3, "Sb": -3, "Bi": -3,
    "C": -4, "Si": -4,
}  # fmt: skip
# pymatgen has no ionic radius for these anions; effective crystal radii (Shannon scale) implied by
# textbook bond lengths (LiH/NaH, TiC, Mg2Si, InP/LaP, GaAs/LaAs, InSb/LaSb, LaBi).
_ANION_RADIUS_FALLBACK = {"H": 1.20, "C": 1.40, "Si": 2.00, "P": 1.80, "As": 1.87, "Sb": 2.06, "Bi": 2.12}
# Species absent from the lambda table borrow a chemically closest stand-in, at a penalty.
_LAMBDA_PROXY = {
    ("Pm", 3): ("Nd", 3), ("Te", -2): ("Se", -2), ("P", -3): ("N", -3), ("As", -3): ("N", -3),
    ("Sb", -3): ("N", -3), ("Bi", -3): ("N", -3), ("C", -4): ("N", -3), ("Si", -4): ("N", -3),
    ("H", -1): ("F", -1),
}  # fmt: skip
_PROXY_PENALTY = 1.0
# Molecular solids of the light gases: kept as themselves, never decorated (a substituted N2 crystal
# is not a material).
_NO_SUBSTITUTION_ELEMENTS = frozenset({"H", "N", "O"})
# Molecular crystals (and the molecular ions of cyanides): substituting them makes no material, so
# they are kept only as published.
_MOLECULAR_FORMULAS = frozenset({"N2", "O2", "Cl2", "H3N", "H3S", "CO", "HC", "CNCl", "SiF4", "PI2",
                                 "KCSN", "KAg(CN)2", "CaC6"})  # fmt: skip
# The universal metal packings accept any metal (each is the ground state of dozens of elements).
_METAL_PACKINGS = frozenset({"A_cF4_225_a", "A_cI2_229_a", "A_hP2_194_c"})
# Hand-picked prototypes chemists recognise; they get a selection bonus.
CLASSIC_PROTOTYPES = frozenset(
    {
        "AB_cF8_225_a_b", "AB_cP2_221_b_a", "AB_cF8_216_c_a", "AB_hP4_186_b_b", "AB2_cF12_225_a_c",
        "A2B_tP6_136_f_a", "AB3C_cP5_221_a_c_b", "AB3C_oP20_62_c_cd_a", "A2BC4_cF56_227_d_a_e",
        "A2B3_hR10_167_c_e", "AB_hP4_194_c_a", "AB2_cP12_205_a_c", "A_cF4_225_a", "A_cI2_229_a",
        "A_hP2_194_c", "A_cF8_227_a", "A2B_cP6_224_b_a", "AB2_hP3_164_a_d", "A3B_cP4_221_d_a",
        "A2B_tI12_141_e_a", "AB3C_hR10_148_c_f_c", "AB2_hP6_194_c_f", "AB3_cP4_221_a_c",
        "AB2_hP3_191_a_d", "A2B_cF24_227_d_a", "AB_cF16_227_a_b", "ABC_cF12_216_b_c_a",
        "AB2C_cF16_225_a_c_b", "ABC3_hR10_167_a_b_e", "AB_tP4_129_a_c", "AB_tP2_123_a_d",
        "AB3_hR8_148_c_f", "AB2_oP6_58_a_g", "A2B_oP12_62_2c_c", "A4BC_tI24_141_h_b_a",
        "ABC2_tI16_122_a_b_d", "A2B_hP9_152_c_a", "A3B_hP4_191_bc_a", "A3B_cP8_223_c_a",
        "A2B_mP12_14_2e_e", "A_hR2_166_c", "ABC_tP6_129_c_a_c", "AB_hP4_194_c_d", "AB_hP2_187_d_a",
        "AB5_hP6_191_a_cg", "A6B_cP7_221_f_a", "AB2_tI6_139_a_e", "ABC2_hR4_166_a_b_c",
        "A2B3_hR5_166_c_ac", "AB3_cF16_225_a_bc", "AB_hR6_160_b_b", "pymatgen:Li2O",
        "pymatgen:SrTiO3", "pymatgen:Si", "pymatgen:CsCl", "pymatgen:TiO2", "pymatgen:Graphite",
    }
)  # fmt: skip
# AFLOW ordered approximants of steels / sigma phase whose species only label Wyckoff sets.
_SKIP_AFLOW_FORMULAS = frozenset({"CrFe11Ni3Mo", "CrFe27Ni3Mo", "Cr(Fe9Ni4)2", "Cr9Fe16Ni7", "CrFe4Ni3",
                                  "Cr(Fe4Ni)3", "Cr4Fe4Ni4PdRh2"})  # fmt: skip
MAX_SITES = 40
# Larger prototypes are shipped as published but not decorated: CHGNet relaxation dominates the build
# time and grows with cell size.
MAX_DECORATED_SITES = 20
_UTIL_SKIP = {"He_BCC", "Si_SiO2_Interface"}  # noble gas; an interface slab, not a crystal


# --------------------------------------------------------------------------------------------------
# small chemistry helpers
# --------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("pymatgen", "chgnet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@lru_cache(maxsize=None)
def _element(sym: str):
    from pymatgen.core import Element

    return Element(sym)


@lru_cache(maxsize=None)
def _cation_states(sym: str) -> tuple[int, ...]:
    """Positive oxidation states an element may take on a cation site (common, ICSD and lambda table)."""
    if sym in ("H", "O", "F") or sym not in _ABSORBERS:
        return ()
    el = _element(sym)
    states = set(el.common_oxidation_states) | set(el.icsd_oxidation_states)
    states |= {q for (s, q) in _lambda_species() if s == sym}
    return tuple(sorted(q for q in states if 1 <= q <= 7))


@lru_cache(maxsize=1)
def _lambda_species() -> frozenset[tuple[str, int]]:
    sp = _subprob()
    return frozenset((s.symbol, int(s.oxi_state)) for s in sp.species)


@lru_cache(maxsize=1)
def _subprob():
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    return SubstitutionProbability()


@lru_cache(maxsize=None)
def _species(sym: str, q: int):
    from pymatgen.core import Species

    return Species(sym, q)


@lru_cache(maxsize=None)
def _lambda(a: tuple[str, int], b: tuple[str, int]) -> float:
    """Data-mined substitution log-weight between two species; stand-ins for species the table lacks."""
    sp = _subprob()
    known = _lambda_species()
    penalty = 0.0
    if a not in known and a in _LAMBDA_PROXY:
        a, penalty = _LAMBDA_PROXY[a], penalty + _PROXY_PENALTY
    if b not in known and b in _LAMBDA_PROXY:
        b, penalty = _LAMBDA_PROXY[b], penalty + _PROXY_PENALTY
    return sp.get_lambda(_species(*a), _species(*b)) - penalty


@lru_cache(maxsize=None)
def ionic_radius(sym: str, q: int) -> float | None:
    """Crystal radius (Shannon scale, Angstrom) of an ion, with fallbacks for pnictide/carbide/hydride."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every ion without tabulated radius
        try:
            r = _species(sym, q).ionic_radius
        except Exception:  # pymatgen raises for impossible states
            r = None
    if r is None and q < 0 and q == ANION_CHARGE.get(sym):
        return _ANION_RADIUS_FALLBACK.get(sym)
    return float(r) if r is not None else None


@lru_cache(maxsize=None)
def metallic_radius(sym: str) -> float:
    el = _element(sym)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = el.metallic_radius or el.atomic_radius
    return float(r)


@lru_cache(maxsize=None)
def _metal_similarity(a: str, b: str) -> float:
    """Chemical similarity of two metals: best lambda between their usual cation states."""
    if a == b:
        return 5.0
    best = -5.0
    for qa in _cation_states(a) or (0,):
        for qb in _cation_states(b) or (0,):
            if qa and qb:
                lam = _lambda((a, qa), (b, qb)) - (0.0 if qa == qb else 1.0)
                best = max(best, lam)
    return best


@lru_cache(maxsize=1)
def _covalent_radii() -> dict[str, float]:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return dict(CovalentRadius.radius)


def structure_problems(structure, min_ratio: float = 0.7) -> list[str]:
    """Reasons a library structure is unusable (empty list when it is fine).

    Checks: ordered, every element an absorber (H..Bi, no noble gas), and no two atoms (periodic images
    included) closer than ``min_ratio`` x the sum of their covalent radii.
    """
    problems = []
    if not structure.is_ordered:
        problems.append("structure is disordered")
        return problems
    bad = sorted({el.symbol for el in structure.composition.elements} - _ABSORBERS)
    if bad:
        problems.append(f"elements outside H..Bi / noble gases: {bad}")
    rcov = _covalent_radii()
    centers, points, _, dists = structure.get_neighbor_list(r=3.5)
    syms = [site.specie.symbol for site in structure]
    worst = None
    for c, p, d in zip(centers, points, dists):
        limit = min_ratio * (rcov.get(syms[c], 1.5) + rcov.get(syms[p], 1.5))
        if d < limit and (worst is None or d / limit < worst[0]):
            worst = (d / limit, syms[c], syms[p], d)
    if worst is not None:
        problems.append(f"atoms too close: {worst[1]}-{worst[2]} {worst[3]:.2f} A")
    if structure.volume / len(structure) > 150:
        problems.append("volume per atom > 150 A^3 (exploded cell)")
    return problems


# --------------------------------------------------------------------------------------------------
# neighbours and environments (cheap cutoff estimate; CrystalNN is the project's labeller but slow)
# --------------------------------------------------------------------------------------------------
# Shell tolerance of the coverage estimate: 0.12 keeps the 8 first neighbours of CsCl / bcc (the next
# shell sits at 1.155 d). The selection heuristic uses a looser 0.2 (_SELECTION_TOL) to see distorted
# polyhedra as one environment; it is frozen because relax-cache keys depend on the selection order.
COVERAGE_TOL = 0.12
_SELECTION_TOL = 0.2


def neighbour_shells(structure, tol: float = COVERAGE_TOL, rmax: float = 6.0) -> list[list[int]]:
    """For each site, indices of the sites within (1 + tol) x its nearest-neighbour distance."""
    centers, points, _, dists = structure.get_neighbor_list(r=rmax)
    shells: list[list[int]] = [[] for _ in range(len(structure))]
    if len(dists) == 0:
        return shells
    dmin = np.full(len(structure), np.inf)
    np.minimum.at(dmin, centers, dists)
    keep = dists <= dmin[centers] * (1 + tol)
    for c, p in zip(centers[keep], points[keep]):
        shells[c].append(int(p))
    return shells


def _dominant(counts: Counter) -> str:
    # ties broken alphabetically so the estimate is deterministic
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else "-"


def inequivalent_sites(structure, symprec: float = 0.1) -> list[tuple[int, int]]:
    """(representative site index, multiplicity) for each symmetry-inequivalent site.

    spglib directly, with SpacegroupAnalyzer's tolerances (same classes, ~2x faster, no scipy import).
    """
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    try:
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=5)
    except Exception:
        dataset = None
    if dataset is None:  # spglib gives up on badly distorted cells: every site is then its own class
        return [(i, 1) for i in range(len(structure))]
    eq = np.asarray(dataset.equivalent_atoms)
    return sorted((int(r), int((eq == r).sum())) for r in np.unique(eq))


def site_environments(structure, symprec: float = 0.1, tol: float = COVERAGE_TOL) -> list[dict[str, Any]]:
    """Element, CN, neighbour counts and dominant neighbour of each inequivalent site (cutoff estimate)."""
    shells = neighbour_shells(structure, tol)
    syms = [site.specie.symbol for site in structure]
    out = []
    for rep, mult in inequivalent_sites(structure, symprec):
        counts = Counter(syms[j] for j in shells[rep])
        out.append(
            {
                "element": syms[rep],
                "site": rep,
                "multiplicity": mult,
                "cn": len(shells[rep]),
                "neighbours": dict(sorted(counts.items())),
                "dominant_neighbour": _dominant(counts),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# prototypes
# --------------------------------------------------------------------------------------------------
@dataclass
class _Proto:
    pid: str
    name: str
    source_file: str
    source_index: int | str
    structure: Any
    mode: str  # "ionic" | "metallic" | "fixed"
    group_el: list[str]
    group_q: list[int]
    group_n: list[int]
    site_group: list[int]
    dimer: list[bool]
    classic: bool
    ineq: list[tuple[int, int, tuple[int, ...]]]  # (site group, CN, neighbour groups (sorted))

    @property
    def n_groups(self) -> int:
        return len(self.group_el)


def _pymatgen_dir() -> Path:
    # located without importing pymatgen.analysis.prototypes, whose import parses (and bibtex-validates)
    # all 288 StructureNL objects: ~10 s we do not need
    import pymatgen.core

    return Path(pymatgen.core.__file__).resolve().parents[1]


def _raw_prototypes() -> list[tuple[str, str, str, int | str, Any]]:
    """(pid, name, source_file, index, structure) of every pymatgen-shipped candidate prototype."""
    from monty.serialization import loadfn
    from pymatgen.core import Structure

    aflow = _pymatgen_dir() / "analysis" / "prototypes" / "aflow_prototypes.json.gz"
    if not aflow.exists():
        raise InputError(str(aflow), "pymatgen's AFLOW prototype library is missing",
                         "install a pymatgen release that ships analysis/prototypes/aflow_prototypes.json.gz")  # fmt: skip
    with gzip.open(aflow, "rt") as fh:
        library = json.load(fh)
    out = []
    seen: Counter = Counter()
    for i, entry in enumerate(library):
        snl = {k: v for k, v in entry["snl"].items() if k in ("lattice", "sites", "charge")}
        s = Structure.from_dict(snl)
        tags = entry["tags"]
        if len(s) > MAX_SITES or not s.is_ordered or s.composition.reduced_formula in _SKIP_AFLOW_FORMULAS:
            continue
        if {el.symbol for el in s.composition.elements} & NOBLE_GASES:
            continue
        label = tags["aflow"]
        seen[label] += 1
        # several prototypes share an AFLOW label (e.g. B27/B29/B31/B16 are all AB_oP8_62_c_c)
        pid = label if seen[label] == 1 else f"{label}-{tags.get('strukturbericht') or seen[label]}"
        bits = [s.composition.reduced_formula]
        extra = ", ".join(str(tags[k]) for k in ("strukturbericht", "mineral") if tags.get(k))
        name = f"{bits[0]} ({extra})" if extra else bits[0]
        out.append((pid, name, "pymatgen/analysis/prototypes/aflow_prototypes.json.gz", i, s))
    util = _pymatgen_dir() / "util" / "structures"
    for path in sorted(util.glob("*.json")):
        if path.stem in _UTIL_SKIP:
            continue
        try:
            obj = loadfn(path)
        except Exception:  # a file we cannot read is simply not a prototype
            continue
        s = obj.final_structure if hasattr(obj, "final_structure") else obj
        if not isinstance(s, Structure):
            continue
        s = s.copy()
        s.remove_oxidation_states()
        for prop in list(s.site_properties):
            s.remove_site_property(prop)
        if len(s) > MAX_SITES or not s.is_ordered:
            continue
        out.append((f"pymatgen:{path.stem}", f"{s.composition.reduced_formula} (pymatgen example)",
                    f"pymatgen/util/structures/{path.name}", path.stem, s))  # fmt: skip
    return out


def _oxidation_states(structure) -> list[int] | None:
    """Per-site integer oxidation states (bond valence, then composition guess), or None."""
    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [int(v) for v in BVAnalyzer().get_valences(structure)]
    except Exception:
        pass
    comp = structure.composition
    if all(el.is_metal or el.is_metalloid for el in comp.elements):
        return None
    n_metal = sum(n for el, n in comp.items() if el.is_metal)
    if n_metal > 2 * (comp.num_atoms - n_metal):
        return None  # metal-rich borides/carbides/nitrides (Cr23C6, Fe3C): intermetallic-like
    try:
        guesses = comp.oxi_state_guesses(max_sites=-50)
    except Exception:
        return None
    if not guesses:
        return None
    g = guesses[0]
    if any(abs(v - round(v)) > 1e-6 for v in g.values()):
        return None
    return [int(round(g[site.specie.symbol])) for site in structure]


def _prepare(pid, name, source_file, index, s) -> _Proto | None:
    syms = [site.specie.symbol for site in s]
    elements = set(syms)
    valences = _oxidation_states(s)
    mode = "ionic"
    if valences is not None:
        # ionic only when every negative site is a genuine anion we know how to substitute
        neg_ok = all(q >= 0 or sym in ANION_CHARGE or sym in ("O", "S", "Se", "Te") for sym, q in zip(syms, valences))
        if not neg_ok or any(q == 0 for q in valences):
            valences = None
    if valences is None:
        mode = "metallic"
        valences = [0] * len(s)
    if (elements <= _NO_SUBSTITUTION_ELEMENTS or s.composition.reduced_formula in _MOLECULAR_FORMULAS
            or (elements & _NO_SUBSTITUTION_ELEMENTS and mode == "metallic")):
        mode = "fixed"
    keys = sorted({(sym, q) for sym, q in zip(syms, valences)}, key=lambda k: (k[1] <= 0, k[0], k[1]))
    index_of = {k: i for i, k in enumerate(keys)}
    site_group = [index_of[(sym, q)] for sym, q in zip(syms, valences)]
    group_n = [site_group.count(i) for i in range(len(keys))]
    shells = neighbour_shells(s, _SELECTION_TOL)
    rcov = _covalent_radii()
    dimer = []
    for gi, (sym, q) in enumerate(keys):
        is_dimer = False
        if q < 0:
            for i, g in enumerate(site_group):
                if g != gi:
                    continue
                # an anion bonded to its own kind (S2 in pyrite, O2 in peroxides, As4 rings)
                for j in shells[i]:
                    if syms[j] == sym and s.get_distance(i, j) < 1.25 * 2 * rcov.get(sym, 1.0):
                        is_dimer = True
        dimer.append(is_dimer)
    ineq = []
    for rep, _mult in inequivalent_sites(s):
        ineq.append((site_group[rep], len(shells[rep]), tuple(sorted(site_group[j] for j in shells[rep]))))
    return _Proto(
        pid=pid, name=name, source_file=source_file, source_index=index, structure=s, mode=mode,
        group_el=[k[0] for k in keys], group_q=[k[1] for k in keys], group_n=group_n,
        site_group=site_group, dimer=dimer, classic=pid in CLASSIC_PROTOTYPES, ineq=ineq,
    )  # fmt: skip


@lru_cache(maxsize=1)
def load_prototypes() -> tuple[_Proto, ...]:
    """All usable pymatgen-shipped prototypes, with oxidation states, site groups and environments."""
    protos = []
    for raw in _raw_prototypes():
        p = _prepare(*raw)
        if p is not None:
            protos.append(p)
    return tuple(protos)


# --------------------------------------------------------------------------------------------------
# decoration
# --------------------------------------------------------------------------------------------------
def _charge_templates(p: _Proto) -> list[tuple[int, ...]]:
    """Charge-neutral charge assignments for the prototype's site groups.

    The original charges scaled by k (NaCl -> MgO / ScN / TiC, rutile TiO2 -> MgF2, fluorite CaF2 ->
    ThO2) plus one charge transfer between two groups of the same sign (perovskite CaTiO3 -> LaAlO3 /
    KNbO3, PbClF -> LaOCl). Prototypes with bonded anion pairs keep their charges.
    """
    q0 = tuple(p.group_q)
    if any(p.dimer):
        return [q0]
    bases = []
    for k in (Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2), Fraction(3), Fraction(4)):
        q = [k * x for x in q0]
        if all(x.denominator == 1 for x in q):
            bases.append(tuple(int(x) for x in q))
    out = []
    for base in bases:
        out.append(base)
        for a in range(len(base)):
            for b in range(a + 1, len(base)):
                if (base[a] > 0) != (base[b] > 0):
                    continue
                g = gcd(p.group_n[a], p.group_n[b])
                for d in (1, -1, 2, -2):
                    q = list(base)
                    q[a] += d * p.group_n[b] // g
                    q[b] -= d * p.group_n[a] // g
                    out.append(tuple(q))
    valid = []
    for q in out:
        if sum(x * n for x, n in zip(q, p.group_n)) != 0:
            continue
        if all((x > 0) == (x0 > 0) and (1 <= x <= 7 if x > 0 else -4 <= x <= -1) for x, x0 in zip(q, q0)):
            if q not in valid:
                valid.append(q)
    return valid


def _group_candidates(p: _Proto, g: int, q: int) -> list[tuple[str, float]]:
    """(element, score) that may occupy site group g with charge q (metallic: q == 0)."""
    orig = p.group_el[g]
    q0 = p.group_q[g]
    out = []
    if p.mode == "metallic":
        if not _element(orig).is_metal and not (p.n_groups == 1 and _element(orig).is_metalloid):
            return [(orig, 5.0)] if orig in _ABSORBERS else []
        col = _element(orig).group
        if p.n_groups == 1 and orig not in _ABSORBERS:
            return []  # actinide / Po allotropes are too exotic to transfer
        for sym in ABSORBER_ELEMENTS:
            el = _element(sym)
            if p.n_groups == 1:
                # elemental structure: same column (diamond C -> Si, Ge, Sn; A7 As -> Sb, Bi), or a
                # chemically similar metal for a metal prototype; the lattice is rescaled, so size need not match
                if el.group == col and sym not in _NO_SUBSTITUTION_ELEMENTS:
                    out.append((sym, _metal_similarity(orig, sym) if el.is_metal else 2.0))
                elif el.is_metal and _element(orig).is_metal:
                    sim = _metal_similarity(orig, sym)
                    if p.pid in _METAL_PACKINGS:
                        out.append((sym, max(sim, MIN_SCORE)))
                    elif sim >= 1.0:
                        out.append((sym, sim))
                continue
            if not el.is_metal:
                continue
            ratio = metallic_radius(sym) / metallic_radius(orig)
            if not 0.85 <= ratio <= 1.18 or abs((el.X or 0) - (_element(orig).X or 0)) > 0.6:
                continue
            out.append((sym, _metal_similarity(orig, sym) - 4 * abs(math.log(ratio))))
        return out
    r0 = ionic_radius(orig, q0)
    for sym in ABSORBER_ELEMENTS:
        if q < 0:
            if p.dimer[g]:
                # bonded anion pairs only swap within the chalcogens / pnictogens (pyrite FeS2 -> FeSe2)
                if _element(sym).group != _element(orig).group or sym not in ANION_CHARGE:
                    continue
            elif ANION_CHARGE.get(sym) != q:
                continue
            elif sym == "H" and p.n_groups > 2 and orig not in ("F", "Cl", "Br", "I", "H"):
                continue  # hydride replaces halide sites, or the anion of a binary; not O in a silicate
        elif q not in _cation_states(sym):
            continue
        elif not (_element(sym).is_metal or _element(sym).is_metalloid) and _element(orig).is_metal:
            continue  # C, N, P, S, halogens only replace polyanion centres (P in PO4), not metal sites
        r = ionic_radius(sym, q if not p.dimer[g] else ANION_CHARGE.get(sym, q))
        if r is None or r0 is None:
            continue
        ratio = r / r0
        if not 0.7 <= ratio <= 1.45:
            continue
        out.append((sym, _lambda((orig, q0), (sym, q)) - 2 * abs(math.log(ratio))))
    return out


@dataclass
class _Candidate:
    proto: int
    elements: tuple[str, ...]  # new element per site group
    charges: tuple[int, ...]
    score: float
    sites: list[tuple[str, int, tuple, str]]  # (element, CN, neighbour-element counts, dominant nb)


# plausibility (lambda minus size mismatch) a decoration needs: on average over its site groups, and
# on its least plausible group (identity scores 6; good same-charge swaps 3-5; unseen pairs -5)
MIN_SCORE = 1.5
MIN_GROUP_SCORE = -0.5


def _top_k(n_groups: int) -> int:
    return {1: 40, 2: 14, 3: 7, 4: 5}.get(n_groups, 3)


def _candidates_for(pi: int, p: _Proto) -> list[_Candidate]:
    out: dict[tuple[str, ...], _Candidate] = {}

    def add(elements, charges, score):
        if any(e not in _ABSORBERS for e in elements):
            return
        if len(set(elements)) != len(elements):
            return
        key = tuple(elements)
        if key in out and out[key].score >= score:
            return
        sites = []
        for g, cn, nbs in p.ineq:
            counts = Counter(elements[j] for j in nbs)
            sites.append((elements[g], cn, tuple(sorted(counts.items())), _dominant(counts)))
        out[key] = _Candidate(pi, key, tuple(charges), score, sites)

    # the prototype itself (kept unrelaxed: it is the published structure)
    if len(set(p.group_el)) == p.n_groups:
        add(tuple(p.group_el), tuple(p.group_q), 6.0)
    if p.mode == "fixed" or len(p.structure) > MAX_DECORATED_SITES:
        return list(out.values())
    templates = _charge_templates(p) if p.mode == "ionic" else [tuple(p.group_q)]
    k = _top_k(p.n_groups)
    for q in templates:
        per_group = []
        for g in range(p.n_groups):
            cands = sorted(_group_candidates(p, g, q[g]), key=lambda t: (-t[1], t[0]))[:k]
            per_group.append(cands)
        if any(not c for c in per_group):
            continue
        if p.mode == "ionic" and min(q) <= -4 and p.n_groups > 2:
            continue  # C4-/Si4- only in binary carbides/silicides (SiC, TiC, Mg2Si)
        for combo in product(*per_group):
            elements = tuple(c[0] for c in combo)
            score = sum(c[1] for c in combo) / len(combo)
            if score < MIN_SCORE or min(c[1] for c in combo) < MIN_GROUP_SCORE:
                continue
            if p.mode == "ionic":
                anions = {e for e, x in zip(elements, q) if x < 0}
                # cations above 4+ only with the hard anions that stabilise them (ReO3, WF6, NbCl5)
                if max(q) > 4 and not anions <= {"O", "F", "Cl"}:
                    continue
                if max(q) > 5 and not anions <= {"O", "F"}:
                    continue
            add(elements, q, score)
    return list(out.values())


@lru_cache(maxsize=1)
def all_candidates() -> tuple[_Candidate, ...]:
    """Every decoration considered, over all prototypes, in a deterministic order."""
    cands = []
    for pi, p in enumerate(load_prototypes()):
        cands.extend(_candidates_for(pi, p))
    return tuple(cands)


# --------------------------------------------------------------------------------------------------
# greedy coverage selection
# --------------------------------------------------------------------------------------------------
class _Coverage:
    """Running counts the selection objective is computed from."""

    # objective weights: element scarcity dominates, then new environments, then balance and cost
    W_ELEMENT = 4.0
    W_ENV_CN = 1.5
    W_ENV_NB = 1.0
    W_ENV_FULL = 0.5
    W_PROTO = 1.5
    W_CLASSIC = 2.0
    W_SCORE = 0.08
    W_BALANCE = 6.0
    BALANCE_TARGET = 0.25
    SITE_COST = 0.6  # FEFF runs once per inequivalent site
    ATOM_COST = 0.1  # CHGNet/FEFF cost grows with cell size
    MAX_PROTO_USES = 20  # per prototype; classic prototypes get twice as many

    def __init__(self):
        self.n_struct: Counter = Counter()
        self.seen_cn: set = set()
        self.seen_nb: set = set()
        self.seen_full: set = set()
        self.proto_uses: Counter = Counter()
        self.dom: Counter = Counter()
        self.n_sites = 0

    def gain(self, c: _Candidate, p: _Proto) -> float:
        if self.proto_uses[p.pid] >= self.MAX_PROTO_USES * (1 + p.classic):
            return -1.0
        g = 0.0
        for el in set(c.elements):
            g += self.W_ELEMENT / (1 + self.n_struct[el]) ** 1.5
        # each new environment counts once per structure, so big low-symmetry cells gain no extra credit
        g += self.W_ENV_CN * len({(el, cn, dn) for el, cn, _, dn in c.sites} - self.seen_cn)
        g += self.W_ENV_NB * len({(el, dn) for el, _, _, dn in c.sites} - self.seen_nb)
        g += self.W_ENV_FULL * len({(el, cn, nbs) for el, cn, nbs, _ in c.sites} - self.seen_full)
        for _el, _cn, _nbs, dn in c.sites:
            if self.n_sites > 40:
                share = self.dom[dn] / self.n_sites
                g -= self.W_BALANCE * max(0.0, share - self.BALANCE_TARGET)
        g += (self.W_PROTO + self.W_CLASSIC * p.classic) / (1 + self.proto_uses[p.pid])
        g += self.W_SCORE * max(-5.0, min(c.score, 6.0))
        g -= self.SITE_COST * len(c.sites) + self.ATOM_COST * len(p.structure)
        return g

    def add(self, c: _Candidate, p: _Proto) -> None:
        for el in set(c.elements):
            self.n_struct[el] += 1
        for el, cn, nbs, dn in c.sites:
            self.seen_cn.add((el, cn, dn))
            self.seen_nb.add((el, dn))
            self.seen_full.add((el, cn, nbs))
            self.dom[dn] += 1
            self.n_sites += 1
        self.proto_uses[p.pid] += 1


def _select(cands, protos, seed):
    """Lazy-greedy generator over candidates: yields the next best, told via .send() if it was kept."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0, 0.05, size=len(cands))
    cov = _Coverage()
    heap = [(-(cov.gain(c, protos[c.proto]) + jitter[i]), i) for i, c in enumerate(cands)]
    heapq.heapify(heap)
    while heap:
        neg, i = heapq.heappop(heap)
        c = cands[i]
        fresh = cov.gain(c, protos[c.proto]) + jitter[i]
        if heap and fresh < -heap[0][0] - 1e-12:
            heapq.heappush(heap, (-fresh, i))
            continue
        if fresh <= 0:
            return
        kept = yield c
        if kept:
            cov.add(c, protos[c.proto])


# --------------------------------------------------------------------------------------------------
# building one structure
# --------------------------------------------------------------------------------------------------
def _decorate(p: _Proto, c: _Candidate):
    """Substituted, rescaled structure and the scaling record (no relaxation)."""
    from pymatgen.core import Lattice, Structure

    s = p.structure
    species = [c.elements[g] for g in p.site_group]

    def radius(el, q, orig_mode):
        if orig_mode == "metallic" or q == 0:
            return metallic_radius(el)
        r = ionic_radius(el, q)
        return r if r is not None else metallic_radius(el)

    # reference lattice scaling (pymatgen RLSVolumePredictor formula): V' = V (sum r' n^1/3 / sum r n^1/3)^3
    num = den = 0.0
    for g in range(p.n_groups):
        n13 = p.group_n[g] ** (1 / 3)
        q_new = c.charges[g]
        if p.dimer[g] and q_new < 0:
            q_new = ANION_CHARGE.get(c.elements[g], q_new)
        q_old = ANION_CHARGE.get(p.group_el[g], p.group_q[g]) if p.dimer[g] else p.group_q[g]
        num += radius(c.elements[g], q_new, p.mode) * n13
        den += radius(p.group_el[g], q_old, p.mode) * n13
    ratio = (num / den) ** 3 if den > 0 else 1.0
    ratio = float(min(max(ratio, 0.35), 3.0))
    lattice = Lattice(s.lattice.matrix * ratio ** (1 / 3))
    new = Structure(lattice, species, s.frac_coords)
    scaling = {"method": "RLS (reference lattice scaling, pymatgen RLSVolumePredictor formula)",
               "radii": "atomic" if p.mode == "metallic" else "ionic", "volume_ratio": round(ratio, 4)}  # fmt: skip
    return new, scaling


class _Relaxer:
    def __init__(self, steps: int, fmax: float):
        from chgnet.model import CHGNet, StructOptimizer

        self.steps, self.fmax = steps, fmax
        self.opt = StructOptimizer(model=CHGNet.load(verbose=False), optimizer_class="FIRE")

    def __call__(self, structure) -> tuple[Any, dict[str, Any]]:
        import contextlib
        import io

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            res = self.opt.relax(structure, fmax=self.fmax, steps=self.steps, relax_cell=True,
                                 verbose=False, assign_magmoms=False)  # fmt: skip
        final = res["final_structure"]
        for prop in list(final.site_properties):
            final.remove_site_property(prop)
        traj = res["trajectory"]
        forces = np.asarray(traj.forces[-1])
        fmax_final = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
        energy = float(traj.energies[-1])
        info = {
            "steps": len(traj.energies),  # force evaluations: initial + one per FIRE step (+ final)
            "max_steps": self.steps,
            "fmax_target_eV_per_A": self.fmax,
            "final_max_force_eV_per_A": round(fmax_final, 4),
            "final_energy_eV": round(energy, 5),
            "final_energy_eV_per_atom": round(energy / len(final), 5),
            "converged": fmax_final <= self.fmax + 1e-9,
            "volume_change": round(final.volume / structure.volume - 1, 4),
        }
        return final, info


DEFAULT_MAX_STRUCTURES = 1100
DEFAULT_MAX_SITES = 4000
MAX_VOLUME_CHANGE = 0.4
MAX_FINAL_FORCE = 1.0  # eV/A: beyond this after the step cap the relax did not settle


class _Cache:
    """Append-only JSON-lines cache of relax results so an interrupted generation resumes."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.data: dict[str, dict] = {}
        if self.path and self.path.exists():
            with open(self.path) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a crash
                        continue
                    self.data[rec["key"]] = rec

    def get(self, key):
        return self.data.get(key)

    def put(self, key, rec):
        rec = {"key": key, **rec}
        self.data[key] = rec
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


def _name(p: _Proto, formula: str) -> str:
    if p.pid.startswith("pymatgen:"):
        return f"{p.pid}:{formula}"
    return f"aflow:{p.pid}:{formula}"


def build_library(
    *,
    max_structures: int | None = None,
    relax: bool = True,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    max_sites: int = DEFAULT_MAX_SITES,
    relax_steps: int = 60,
    fmax: float = 0.1,
    cache_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Generate the structure library from pymatgen-shipped prototypes.

    Args:
        max_structures: stop after this many accepted structures (default DEFAULT_MAX_STRUCTURES).
        relax: CHGNet-relax every structure whose chemistry differs from its prototype.
        seed: tie-breaking seed of the greedy selection; same seed, same library.
        progress: called as ``progress(n_done, n_target, name)`` after each accepted structure.
        max_sites: stop once this many symmetry-inequivalent sites were accepted (FEFF budget).
        relax_steps, fmax: FIRE step cap and force target (eV/A) of the CHGNet relax.
        cache_path: JSON-lines file caching relax results, so an interrupted run resumes.

    Returns:
        list of ``{"name", "structure" (pymatgen dict), "provenance"}``.
    """
    if max_structures is not None and max_structures < 1:
        raise InputError("build_library(max_structures)", f"must be >= 1, got {max_structures}",
                         "pass a positive number or None for the default")  # fmt: skip
    target = max_structures if max_structures is not None else DEFAULT_MAX_STRUCTURES
    protos = load_prototypes()
    cands = all_candidates()
    relaxer = _Relaxer(relax_steps, fmax) if relax else None
    cache = _Cache(cache_path)
    versions = _versions()
    entries: list[dict[str, Any]] = []
    names: set[str] = set()
    n_sites = 0
    gen = _select(cands, protos, seed)
    kept = None
    while len(entries) < target and n_sites < max_sites:
        try:
            c = gen.send(kept) if kept is not None else next(gen)
        except StopIteration:
            break
        p = protos[c.proto]
        kept = False
        entry = _build_one(p, c, relaxer, cache, versions, seed)
        if entry is None or entry["name"] in names:
            continue
        kept = True
        names.add(entry["name"])
        entries.append(entry)
        n_sites += len(c.sites)
        if progress is not None:
            progress(len(entries), target, entry["name"])
    gen.close()
    return entries


def _build_one(p: _Proto, c: _Candidate, relaxer, cache: _Cache, versions, seed) -> dict | None:
    from pymatgen.core import Structure

    identity = tuple(c.elements) == tuple(p.group_el)
    if identity:
        struct, scaling = p.structure.copy(), {"method": "none (published prototype geometry)", "volume_ratio": 1.0}
    else:
        struct, scaling = _decorate(p, c)
    formula = struct.composition.reduced_formula
    substitution = {}
    for g in range(p.n_groups):
        old = p.group_el[g] + (f"{p.group_q[g]:+d}" if p.mode == "ionic" else "")
        new = c.elements[g] + (f"{c.charges[g]:+d}" if p.mode == "ionic" else "")
        substitution[old] = new
    prov: dict[str, Any] = {
        "source": "pymatgen AFLOW prototype library" if p.source_file.endswith("json.gz")
        else "pymatgen example structures",
        "source_file": p.source_file,
        "source_index": p.source_index,
        "prototype_id": p.pid,
        "prototype_name": p.name,
        "prototype_formula": p.structure.composition.reduced_formula,
        "decoration_mode": p.mode,
        "substitution": substitution,
        "substitution_score": round(c.score, 3),
        "scaling": scaling,
        "relaxed": False,
        **{f"{k}_version": v for k, v in versions.items()},
        "seed": seed,
    }
    if not identity and relaxer is not None:
        key_src = json.dumps({"pid": p.pid, "el": c.elements, "q": c.charges, "steps": relaxer.steps,
                              "fmax": relaxer.fmax, "v": scaling["volume_ratio"]}, sort_keys=True)  # fmt: skip
        key = hashlib.sha1(key_src.encode()).hexdigest()
        rec = cache.get(key)
        if rec is None:
            try:
                final, info = relaxer(struct)
            except Exception as exc:  # CHGNet can fail on pathological graphs: reject, do not crash
                cache.put(key, {"rejected": f"relax failed: {type(exc).__name__}: {exc}"})
                return None
            rejected = None
            if abs(info["volume_change"]) > MAX_VOLUME_CHANGE:
                rejected = f"volume changed by {info['volume_change']:+.0%}"
            elif info["final_max_force_eV_per_A"] > MAX_FINAL_FORCE or not math.isfinite(info["final_energy_eV"]):
                rejected = f"max force still {info['final_max_force_eV_per_A']} eV/A"
            else:
                probs = structure_problems(final)
                rejected = "; ".join(probs) if probs else None
            if rejected:
                cache.put(key, {"rejected": rejected, "relax": info})
                return None
            rec = {"structure": final.as_dict(), "relax": info}
            cache.put(key, rec)
        if "rejected" in rec:
            return None
        struct = Structure.from_dict(rec["structure"])
        prov["relaxed"] = True
        prov["relax"] = {"method": "CHGNet StructOptimizer (FIRE, cell relaxed)", **rec["relax"]}
    elif structure_problems(struct):
        return None
    return {"name": _name(p, formula), "structure": _compact(struct.as_dict()), "provenance": prov}


def _compact(d: dict) -> dict:
    """Drop redundant Cartesian coordinates and round floats so the shipped file stays small."""
    for site in d.get("sites", []):
        site.pop("xyz", None)
        site["abc"] = [round(float(x), 6) for x in site["abc"]]
        if not site.get("properties"):
            site.pop("properties", None)
    d["lattice"] = {"matrix": [[round(float(x), 6) for x in row] for row in d["lattice"]["matrix"]],
                    "pbc": d["lattice"].get("pbc", (True, True, True))}  # fmt: skip
    d.pop("properties", None)
    return d


# --------------------------------------------------------------------------------------------------
# reference-compound supplement
# --------------------------------------------------------------------------------------------------
# The greedy selection balances neighbour elements and favours new environments, so the 3d metals end
# up with only 1-4 oxide sites each and no elemental metal or simple sulfide at all, while most XAS
# measured in practice is of exactly those (foils, oxides, sulfides). The supplement adds the textbook
# reference compounds of each 3d metal. Rows: (name, prototype id, the prototype's site-group element
# -> (new element, charge used for the lattice rescaling; None = the prototype's), absorbers "M").
SUPPLEMENT: tuple[tuple[str, str, dict, tuple[str, ...]], ...] = (
    ("fcc metal", "A_cF4_225_a", {"Cu": ("M", 0)}, ("Ni", "Cu")),
    ("bcc metal", "A_cI2_229_a", {"W": ("M", 0)}, ("V", "Cr", "Fe")),
    ("hcp metal", "A_hP2_194_c", {"Mg": ("M", 0)}, ("Sc", "Ti", "Co", "Zn")),
    ("rocksalt MO", "AB_cF8_225_a_b", {"Na": ("M", 2), "Cl": ("O", -2)}, ("Ti", "V", "Mn", "Fe", "Co", "Ni")),
    ("wurtzite MO", "AB_hP4_186_b_b", {"Zn": ("M", 2), "S": ("O", -2)}, ("Zn",)),
    ("corundum M2O3", "A2B3_hR10_167_c_e", {"Al": ("M", 3), "O": ("O", -2)}, ("Sc", "Ti", "V", "Cr", "Mn", "Fe")),
    ("rutile MO2", "A2B_tP6_136_f_a", {"Ti": ("M", 4), "O": ("O", -2)}, ("Ti", "V", "Cr", "Mn")),
    ("spinel MgM2O4 (octahedral M3+)", "A2BC4_cF56_227_d_a_e", {"Al": ("M", 3), "Mg": ("Mg", 2), "O": ("O", -2)},
     ("Sc", "V", "Cr", "Mn", "Fe", "Co")),
    ("spinel MAl2O4 (tetrahedral M2+)", "A2BC4_cF56_227_d_a_e", {"Al": ("Al", 3), "Mg": ("M", 2), "O": ("O", -2)},
     ("Mn", "Fe", "Co", "Ni", "Cu", "Zn")),
    ("perovskite SrMO3", "AB3C_cP5_221_a_c_b", {"Ca": ("Sr", 2), "Ti": ("M", 4), "O": ("O", -2)},
     ("Ti", "V", "Cr", "Mn", "Fe", "Co")),
    ("perovskite LaMO3", "AB3C_cP5_221_a_c_b", {"Ca": ("La", 3), "Ti": ("M", 3), "O": ("O", -2)},
     ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni")),
    ("ilmenite MTiO3", "AB3C_hR10_148_c_f_c", {"Fe": ("M", 2), "Ti": ("Ti", 4), "O": ("O", -2)},
     ("Mn", "Fe", "Co", "Ni", "Zn")),
    ("cuprite M2O", "A2B_cP6_224_b_a", {"Cu": ("M", 1), "O": ("O", -2)}, ("Cu",)),
    ("tenorite MO", "AB_mC8_15_c_e", {"Cu": ("M", 2), "O": ("O", -2)}, ("Cu",)),
    ("rocksalt MS", "AB_cF8_225_a_b", {"Na": ("M", 2), "Cl": ("S", -2)}, ("Mn",)),
    ("zincblende MS", "AB_cF8_216_c_a", {"Zn": ("M", 2), "S": ("S", -2)}, ("Zn",)),
    ("wurtzite MS", "AB_hP4_186_b_b", {"Zn": ("M", 2), "S": ("S", -2)}, ("Zn",)),
    # no FeS, MnS2: CHGNet (run without magnetic moments) collapses high-spin Fe2+/Mn2+ sulfides by
    # 16-17 % in volume (M-S 0.15-0.3 A too short)
    ("NiAs-type MS", "AB_hP4_194_c_a", {"Ni": ("M", 2), "As": ("S", -2)}, ("V", "Cr", "Co", "Ni")),
    ("pyrite MS2", "AB2_cP12_205_a_c", {"Fe": ("M", None), "S": ("S", None)}, ("Fe", "Co", "Ni")),
    ("covellite CuS", "AB_hP12_194_df_ce", {"Cu": ("M", None), "S": ("S", None)}, ("Cu",)),
    # session 23: the library held ~80 inequivalent 3d sites with O neighbours, 56 of the 68 with XANES
    # octahedral, no tetrahedral Cr: measured oxide spectra (chromates, VO2, goethite) were read as the
    # octahedra the models had seen. Oxide hosts with other coordinations, decorated with the 3d metals
    # that form them (real compounds, except FePO4 in the BPO4 type, a stand-in for tetrahedral Fe3+)
    ("zircon YMO4 (tetrahedral M5+)", "A4BC_tI24_141_h_b_a", {"Zr": ("Y", 3), "Si": ("M", 5), "O": ("O", -2)},
     ("V", "Cr")),
    ("zircon CaMO4 (tetrahedral M6+, chromatite)", "A4BC_tI24_141_h_b_a",
     {"Zr": ("Ca", 2), "Si": ("M", 6), "O": ("O", -2)}, ("Cr",)),
    ("BPO4-type MPO4 (tetrahedral M3+)", "AB4C_tI12_82_c_g_a", {"B": ("M", 3), "P": ("P", 5), "O": ("O", -2)},
     ("Fe",)),
    ("infinite-layer SrMO2 (square-planar M2+)", "ABC2_tP4_123_d_a_f",
     {"Ca": ("Sr", 2), "Cu": ("M", 2), "O": ("O", -2)}, ("Fe", "Cu")),
    ("SrCuO2 chains (square-planar M2+)", "AB2C_oC16_63_c_2c_c", {"Cu": ("M", 2), "Sr": ("Sr", 2), "O": ("O", -2)},
     ("Cu",)),
    ("K2NiF4-type La2MO4 (elongated octahedra)", "AB2C4_tI14_139_a_e_ce",
     {"Cu": ("M", 2), "La": ("La", 3), "O": ("O", -2)}, ("Co", "Ni", "Cu")),
    ("calcite MCO3", "ABC3_hR10_167_a_b_e-G0_1", {"Ca": ("M", 2), "C": ("C", 4), "O": ("O", -2)},
     ("Mn", "Fe", "Co", "Ni", "Zn")),
    ("olivine LiMPO4", "pymatgen:LiFePO4", {"Fe": ("M", 2), "Li": ("Li", 1), "P": ("P", 5), "O": ("O", -2)},
     ("Mn", "Fe", "Co", "Ni")),
    ("orthorhombic perovskite LaMO3 (tilted octahedra)", "AB3C_oP20_62_c_cd_a",
     {"Ca": ("La", 3), "Ti": ("M", 3), "O": ("O", -2)}, ("Cr", "Mn", "Fe")),
    ("orthorhombic perovskite CaMO3", "AB3C_oP20_62_c_cd_a", {"Ca": ("Ca", 2), "Ti": ("M", 4), "O": ("O", -2)},
     ("Ti", "V", "Mn")),
    # (brookite TiO2 was tried too: the build's checks reject its relaxed cell)
    ("anatase MO2", "A2B_tI12_141_e_a", {"Ti": ("M", 4), "O": ("O", -2)}, ("Ti",)),
)  # fmt: skip


def supplement_candidates() -> list[tuple[str, _Candidate]]:
    """(host name, decoration) of every SUPPLEMENT row and absorber, in table order."""
    protos = load_prototypes()
    index = {p.pid: i for i, p in enumerate(protos)}
    out = []
    for host, pid, assign, absorbers in SUPPLEMENT:
        if pid not in index:
            raise InputError(f"SUPPLEMENT {host!r}", f"prototype {pid} is not in this pymatgen",
                             "install the pymatgen version in pyproject.toml")  # fmt: skip
        pi = index[pid]
        p = protos[pi]
        for m in absorbers:
            elements = tuple(m if assign[el][0] == "M" else assign[el][0] for el in p.group_el)
            charges = tuple(q if assign[el][1] is None else assign[el][1] for el, q in zip(p.group_el, p.group_q))
            sites = []
            for g, cn, nbs in p.ineq:
                counts = Counter(elements[j] for j in nbs)
                sites.append((elements[g], cn, tuple(sorted(counts.items())), _dominant(counts)))
            out.append((host, _Candidate(pi, elements, charges, 6.0, sites)))
    return out


def build_supplement(
    existing: list[dict[str, Any]] | None = None,
    *,
    relax: bool = True,
    relax_steps: int = 60,
    fmax: float = 0.1,
    cache_path: str | os.PathLike | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Entries of the reference-compound supplement that `existing` lacks (by name): decorated, rescaled and
    CHGNet-relaxed like the greedy library, rejected by the same checks. Idempotent."""
    protos = load_prototypes()
    names = {e["name"] for e in existing or []}
    relaxer = _Relaxer(relax_steps, fmax) if relax else None
    cache, versions = _Cache(cache_path), _versions()
    todo = supplement_candidates()
    out = []
    for n, (host, c) in enumerate(todo, 1):
        p = protos[c.proto]
        entry = _build_one(p, c, relaxer, cache, versions, 0)
        if entry is not None and entry["name"] not in names:
            entry["provenance"]["supplement"] = f"3d reference compounds: {host}"
            names.add(entry["name"])
            out.append(entry)
        if progress is not None:
            progress(n, len(todo), entry["name"] if entry else f"rejected {host} {c.elements}")
    return out


# --------------------------------------------------------------------------------------------------
# persistence and coverage
# --------------------------------------------------------------------------------------------------
def save_library(entries: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write entries as gzip-compressed JSON (deterministic bytes for identical entries)."""
    path = Path(path)
    for i, e in enumerate(entries):
        missing = {"name", "structure", "provenance"} - set(e)
        if missing:
            raise InputError(f"library entry #{i}", f"missing keys {sorted(missing)}",
                             "entries must come from build_library() or load_library()")  # fmt: skip
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "entries": entries}
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    os.replace(tmp, path)
    return path


def load_library(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read a library file (default: the shipped ``xastruct/data/builtin_structures.json.gz``)."""
    path = Path(path) if path is not None else DATA_PATH
    if not path.exists():
        raise InputError(str(path), "structure library file not found",
                         "pass an existing file or regenerate with `python -m xastruct.library`")  # fmt: skip
    try:
        with gzip.open(path, "rb") as fh:
            payload = json.loads(fh.read())
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not a gzip JSON structure library ({exc})",
                         "regenerate it with `python -m xastruct.library`") from exc  # fmt: skip
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise InputError(str(path), f"not a {FORMAT_NAME} file", "regenerate it with `python -m xastruct.library`")
    if payload.get("version") != FORMAT_VERSION:
        raise InputError(str(path), f"library format version {payload.get('version')} is not {FORMAT_VERSION}",
                         "regenerate it with this version of xastruct")  # fmt: skip
    entries = payload.get("entries")
    if not isinstance(entries, list):
        raise InputError(str(path), "'entries' is not a list", "regenerate it with `python -m xastruct.library`")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"name", "structure", "provenance"} <= set(e):
            raise InputError(f"{path} entry #{i}", "missing name/structure/provenance",
                             "regenerate it with `python -m xastruct.library`")  # fmt: skip
    return entries


def library_coverage(entries: list[dict[str, Any]], symprec: float = 0.1) -> dict[str, Any]:
    """Absorbing-element coverage of a library (cutoff neighbour estimate on inequivalent sites).

    Returns a dict with ``n_structures``, ``n_inequivalent_sites``, ``absorbing_elements``,
    ``missing_elements`` (of :data:`ABSORBER_ELEMENTS`), ``per_element`` (structures, inequivalent
    sites, distinct environments = (CN, neighbour counts), CN values), ``dominant_neighbour_share``
    (fraction of inequivalent absorbing sites whose most common neighbour is that element, descending)
    and ``cn_histogram``.
    """
    from pymatgen.core import Structure

    per: dict[str, dict[str, Any]] = {}
    dom: Counter = Counter()
    cn_hist: Counter = Counter()
    n_sites = 0
    for e in entries:
        s = e["structure"] if isinstance(e["structure"], Structure) else Structure.from_dict(e["structure"])
        seen_here = set()
        for site in site_environments(s, symprec):
            el = site["element"]
            rec = per.setdefault(el, {"structures": 0, "inequivalent_sites": 0, "_env": set(), "_cn": set()})
            if el not in seen_here:
                rec["structures"] += 1
                seen_here.add(el)
            rec["inequivalent_sites"] += 1
            rec["_env"].add((site["cn"], tuple(sorted(site["neighbours"].items()))))
            rec["_cn"].add(site["cn"])
            dom[site["dominant_neighbour"]] += 1
            cn_hist[site["cn"]] += 1
            n_sites += 1
    per_element = {
        el: {"structures": r["structures"], "inequivalent_sites": r["inequivalent_sites"],
             "environments": len(r["_env"]), "cn_values": sorted(r["_cn"])}  # fmt: skip
        for el, r in sorted(per.items(), key=lambda kv: ABSORBER_ELEMENTS.index(kv[0]) if kv[0] in _ABSORBERS else 999)
    }
    shares = {el: n / n_sites for el, n in sorted(dom.items(), key=lambda kv: (-kv[1], kv[0]))} if n_sites else {}
    absorbing = [el for el in per_element if el in _ABSORBERS]
    return {
        "n_structures": len(entries),
        "n_inequivalent_sites": n_sites,
        "n_absorbing_elements": len(absorbing),
        "absorbing_elements": absorbing,
        "missing_elements": [el for el in ABSORBER_ELEMENTS if el not in per_element],
        "per_element": per_element,
        "dominant_neighbour_share": shares,
        "cn_histogram": dict(sorted(cn_hist.items())),
    }


# --------------------------------------------------------------------------------------------------
# generation entry point
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Generate the shipped library: ``python -m xastruct.library [--out PATH] [--cache PATH]``."""
    ap = argparse.ArgumentParser(prog="python -m xastruct.library", description=main.__doc__)
    ap.add_argument("--out", default=str(DATA_PATH))
    ap.add_argument("--cache", default=str(Path.cwd() / "scratch" / "library_relax_cache.jsonl"))
    ap.add_argument("--max-structures", type=int, default=None)
    ap.add_argument("--max-sites", type=int, default=DEFAULT_MAX_SITES)
    ap.add_argument("--relax-steps", type=int, default=60)
    ap.add_argument("--no-relax", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (leave cores for others)")
    ap.add_argument("--supplement-only", action="store_true",
                    help="append the missing SUPPLEMENT entries to the library at --out, keep the rest")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()

    def report(done, total, name):
        print(f"[{time.time() - t0:7.0f}s] {done:5d}/{total} {name}", flush=True)

    if args.supplement_only:
        entries = load_library(args.out)
    else:
        entries = build_library(max_structures=args.max_structures, relax=not args.no_relax, seed=args.seed,
                                progress=report, max_sites=args.max_sites, relax_steps=args.relax_steps,
                                cache_path=args.cache)  # fmt: skip
    # the reference-compound supplement comes after the greedy selection and outside its budgets
    entries = entries + build_supplement(entries, relax=not args.no_relax, relax_steps=args.relax_steps,
                                         cache_path=args.cache, progress=report)
    out = save_library(entries, args.out)
    cov = library_coverage(entries)
    print(json.dumps({k: v for k, v in cov.items() if k != "per_element"}, indent=1))
    print(f"wrote {len(entries)} structures to {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
