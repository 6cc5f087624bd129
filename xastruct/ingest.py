"""Ingest: FEFF trees, XDI measurements, structure files, Materials Project, the built-in library.

Every source is turned into `Parsed` items (a structure row, its labelled sites, its spectra) by
pure functions that may run in worker processes; `write_parsed` then writes one batch in one
transaction, keyed on natural keys so a rerun inserts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from . import store
from .errors import InputError, XAStructError
from .schema import sites as sites_t
from .schema import structures as structures_t

Progress = Callable[[int], None]


@dataclass
class Parsed:
    """What one source item contributes: a structure (or None), labelled sites, spectra."""

    name: str
    structure: dict | None = None  # structures row incl. content_hash
    sites: list[dict] = field(default_factory=list)  # label dicts (site_index, element, cn, ...)
    spectra: list[dict] = field(default_factory=list)  # spectra rows; '_site_index' links a site
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ structures
def content_hash(structure) -> str:
    """Hash of lattice + ordered sites (rounded): the same structure file twice -> same hash.

    Site order is part of the identity because spectra and labels refer to site indices.
    """
    lat = np.round(structure.lattice.matrix, 4) + 0.0
    parts = [lat.tobytes()]
    for site in structure:
        fc = np.round(np.mod(site.frac_coords, 1.0), 4) % 1.0 + 0.0
        parts.append(site.species_string.encode() + fc.tobytes())
    return hashlib.sha256(b"|".join(parts)).hexdigest()


AMU_PER_A3_IN_G_CM3 = 1.66053906660  # 1 amu / A^3 in g/cm^3 (pymatgen's Structure.density, without its unit objects)


def structure_row(structure, *, source: str, source_id: str | None, provenance: dict | None) -> dict:
    from .labels import symmetry_dataset

    try:
        ds = symmetry_dataset(structure, 0.01)  # shared with the site labels' symmetry orbits
        sg, sgn = str(ds.international), int(ds.number)
    except Exception:  # spglib can fail on odd cells; the symbol is informative only
        sg, sgn = None, None
    comp = structure.composition
    return dict(
        source=source,
        source_id=source_id,
        formula=comp.reduced_formula,
        chemsys=comp.chemical_system,
        n_sites=len(structure),
        volume=float(structure.volume),
        density=float(comp.weight) / structure.volume * AMU_PER_A3_IN_G_CM3,
        spacegroup=sg,
        spacegroup_number=sgn,
        content_hash=content_hash(structure),
        structure_json=json.dumps(structure.as_dict()),
        provenance=provenance or {},
    )


def label_sites(structure, elements: Iterable[str] | None, *, skip: set[str] = frozenset()) -> list[dict]:
    """Labels for every site of the given elements (all elements if None), minus `skip`."""
    from .labels import site_labels

    want = None if elements is None else set(elements)
    idx = [
        i
        for i, s in enumerate(structure)
        if (want is None or s.specie.symbol in want) and s.specie.symbol not in skip
    ]
    if not idx:
        return []
    return site_labels(structure, indices=idx)


def spectrum_key(*parts) -> str:
    return hashlib.sha256("|".join("" if p is None else str(p) for p in parts).encode()).hexdigest()


def spectrum_row(rec, *, structure_hash: str | None, site_index: int | None, provenance: dict) -> dict:
    """A spectra row from a readers.SpectrumRecord; '_site_index' is resolved at write time."""
    normalized = rec.mu_norm is not None
    prov = {"path": rec.path, "sha256": rec.sha256, **provenance}
    if rec.metadata:
        prov["metadata"] = rec.metadata
    return dict(
        key=spectrum_key(rec.source, structure_hash, site_index, rec.edge, rec.kind, rec.sha256),
        absorber=rec.absorber,
        edge=rec.edge,
        kind=rec.kind,
        source=rec.source,
        energies=np.asarray(rec.energies, float).tolist(),
        mu=np.asarray(rec.mu_norm if normalized else rec.mu, float).tolist(),
        mu_raw=np.asarray(rec.mu, float).tolist(),
        k=None if rec.k is None else np.asarray(rec.k, float).tolist(),
        chi=None if rec.chi is None else np.asarray(rec.chi, float).tolist(),
        e0=None if rec.e0 is None else float(rec.e0),
        edge_step=getattr(rec, "edge_step", None),
        normalized=normalized,
        sample_name=rec.sample_name,
        provenance=prov,
        _structure_hash=structure_hash,
        _site_index=site_index,
    )


# ---------------------------------------------------------------------------------------- writer
_SITE_COLS = [c.name for c in sites_t.columns if c.name != "id"]


def write_parsed(engine: sa.Engine, items: Sequence[Parsed], *, run_id: int | None = None) -> dict:
    """Write one batch in ONE transaction. Returns counts of rows inserted per table."""
    structs: dict[str, dict] = {}
    for it in items:
        if it.structure is not None:
            structs.setdefault(it.structure["content_hash"], it.structure)
    counts = {"structures": 0, "sites": 0, "spectra": 0}
    with engine.begin() as conn:
        counts["structures"] = store.bulk_insert(conn, "structures", list(structs.values()))
        ids = store.lookup_ids(
            conn, "structures", "content_hash", [it.structure["content_hash"] for it in items if it.structure]
        )
        site_rows = []
        for it in items:
            if it.structure is None:
                continue
            sid = ids[it.structure["content_hash"]]
            for lab in it.sites:
                row = {k: lab.get(k) for k in _SITE_COLS if k != "structure_id"}
                row["structure_id"] = sid
                site_rows.append(row)
        counts["sites"] = store.bulk_insert(conn, "sites", site_rows)
        sids = store.site_ids(conn, ids.values()) if ids else {}
        spec_rows = []
        for it in items:
            for sp in it.spectra:
                row = {k: v for k, v in sp.items() if not k.startswith("_")}
                h = sp.get("_structure_hash")
                st_id = ids.get(h) if h else None
                row["structure_id"] = st_id
                idx = sp.get("_site_index")
                row["site_id"] = sids.get((st_id, idx)) if st_id is not None and idx is not None else None
                row["run_id"] = run_id
                spec_rows.append(row)
        counts["spectra"] = store.bulk_insert(conn, "spectra", spec_rows)
    return counts


def existing_labelled(engine: sa.Engine) -> set[tuple[str, str]]:
    """(content_hash, element) pairs whose sites are already labelled: reruns skip that work."""
    q = (
        sa.select(structures_t.c.content_hash, sites_t.c.element)
        .select_from(sites_t.join(structures_t, structures_t.c.id == sites_t.c.structure_id))
        .distinct()
    )
    with engine.connect() as conn:
        return {(h, e) for h, e in conn.execute(q)}


def existing_spectrum_keys(engine: sa.Engine, source: str | None = None) -> set[str]:
    from .schema import spectra

    q = sa.select(spectra.c.key)
    if source:
        q = q.where(spectra.c.source == source)
    with engine.connect() as conn:
        return set(conn.execute(q).scalars())


def _pool_map(fn, args: Sequence, *, workers: int, chunksize: int = 8, labelled=None) -> Iterator:
    """Map in worker processes (order preserved); in-process when workers <= 1.

    `labelled` ((content_hash, element) pairs already labelled) is handed to every worker once.
    """
    _init_labelled(labelled or set())
    if workers <= 1 or len(args) < 2 * chunksize:
        for a in args:
            yield fn(a)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_labelled, initargs=(labelled or set(),)) as ex:
        yield from ex.map(fn, args, chunksize=chunksize)


def run_ingest(
    engine: sa.Engine,
    parse: Callable,
    args: Sequence,
    *,
    command: str,
    cli_args: dict,
    workers: int = 1,
    batch_size: int = 256,
    progress: Progress | None = None,
    labelled: set | None = None,
) -> dict:
    """Parse `args` with `parse` (maybe in processes), write in batches, record the run."""
    summary_counts = {"structures": 0, "sites": 0, "spectra": 0}
    failed: list[str] = []
    with store.run_record(engine, command, cli_args) as summary:
        batch: list[Parsed] = []
        for parsed in _pool_map(parse, args, workers=workers, labelled=labelled):
            failed.extend(parsed.errors)
            if parsed.structure is not None or parsed.spectra:
                batch.append(parsed)
            if len(batch) >= batch_size:
                for k, v in write_parsed(engine, batch, run_id=summary["run_id"]).items():
                    summary_counts[k] += v
                batch = []
            if progress:
                progress(1)
        if batch:
            for k, v in write_parsed(engine, batch, run_id=summary["run_id"]).items():
                summary_counts[k] += v
        summary.update(added=summary_counts, failed=len(failed), items=len(args))
        summary["failures"] = failed[:200]
    return {"added": summary_counts, "failed": failed, "items": len(args), "run_id": summary["run_id"]}


# ------------------------------------------------------------------------------------- FEFF tree
_FEFF_SITE_DIR = "FEFF-XANES", "FEFF-EXAFS", "FEFF"


def find_feff_items(root: str | Path) -> list[str]:
    """Material folders (holding POSCAR/CIF + FEFF-*/<idx>_<El>/) or plain FEFF run folders."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "path does not exist", "give a folder of FEFF calculations")
    items = []
    base = root / "materials" if (root / "materials").is_dir() else root
    in_materials = base != root
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        # under materials/, every folder with a structure is a material, spectra or not
        is_material = (in_materials and d.parent == base) or any((d / s).is_dir() for s in _FEFF_SITE_DIR)
        if is_material and _structure_file(d) is not None:
            items.append(str(d))
            dirnames[:] = []  # its sub-folders belong to this material
        elif "feff.inp" in filenames and ({"xmu.dat", "chi.dat"} & set(filenames)):
            if not any(p.name in _FEFF_SITE_DIR for p in d.parents):
                items.append(str(d))
    return sorted(items)


def _structure_file(d: Path) -> Path | None:
    for name in ("POSCAR", "CONTCAR", "structure.cif"):
        if (d / name).is_file():
            return d / name
    cifs = sorted(d.glob("*.cif"))
    return cifs[0] if cifs else None


_LABELLED: set = set()


def _init_labelled(labelled: set) -> None:
    global _LABELLED
    _LABELLED = labelled


def parse_feff_item(path: str) -> Parsed:
    """One material folder (structure + per-site spectra) or one plain FEFF run folder."""
    d = Path(path)
    try:
        sfile = _structure_file(d)
        if sfile is None:
            return _parse_feff_run_dir(d)
        return _parse_feff_material(d, sfile)
    except InputError as exc:
        return Parsed(name=str(d), errors=[str(exc)])
    except Exception as exc:  # one broken folder must not stop the ingest: report it instead
        return Parsed(name=str(d), errors=[f"{d}: {type(exc).__name__}: {exc}"])


def _load_structure(path: Path):
    from .readers import read_structures

    found = read_structures(path)
    if len(found) != 1:
        raise InputError(path, f"expected one structure, found {len(found)}", "one structure per material folder")
    return found[0][1]


def _parse_feff_material(d: Path, sfile: Path) -> Parsed:
    from .readers import read_feff_chi, read_feff_xmu

    structure = _load_structure(sfile)
    row = structure_row(
        structure, source="feff-tree", source_id=d.name, provenance={"path": str(sfile), "tree": str(d.parent)}
    )
    h = row["content_hash"]
    out = Parsed(name=d.name, structure=row)
    absorbers: set[str] = set()
    for sub in _FEFF_SITE_DIR:
        for site_dir in sorted((d / sub).glob("*_*")) if (d / sub).is_dir() else []:
            idx_s, _, el = site_dir.name.partition("_")
            try:
                idx = int(idx_s)
                if not (0 <= idx < len(structure)):
                    raise InputError(site_dir, f"site index {idx} is outside the structure ({len(structure)} sites)",
                                     "name site folders <0-based index>_<Element>")
                if structure[idx].specie.symbol != el:
                    raise InputError(site_dir, f"site {idx} of {sfile.name} is {structure[idx].specie.symbol}, not the absorber {el}",
                                     "check the site index (0-based into the structure file)")
                xmu = site_dir / "xmu.dat"
                if not xmu.is_file():
                    raise InputError(site_dir, "no xmu.dat", "rerun FEFF or remove the folder")
                kind = "EXAFS" if sub == "FEFF-EXAFS" else ("XANES" if sub == "FEFF-XANES" else None)
                rec = read_feff_xmu(xmu, absorber=el, kind=kind)
                chi_file = site_dir / "chi.dat"
                if rec.kind == "EXAFS" and chi_file.is_file() and rec.k is None:
                    rec.k, rec.chi = read_feff_chi(chi_file)
                out.spectra.append(spectrum_row(rec, structure_hash=h, site_index=idx, provenance={"code": rec.source}))
                absorbers.add(el)
            except InputError as exc:
                out.errors.append(str(exc))
    skip = {e for e in absorbers if (h, e) in _LABELLED}
    out.sites = label_sites(structure, absorbers, skip=skip)
    return out


def _parse_feff_run_dir(d: Path) -> Parsed:
    """A plain FEFF folder: the feff.inp cluster, boxed in vacuum, is the structure (absorber = site 0)."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.feff.inputs import Atoms

    from .readers import read_feff_chi, read_feff_xmu

    inp = d / "feff.inp"
    try:
        cluster = Atoms.cluster_from_file(str(inp))
    except Exception as exc:
        raise InputError(inp, f"cannot read the ATOMS cluster ({exc})", "check the feff.inp ATOMS card") from exc
    span = np.ptp(cluster.cart_coords, axis=0).max() if len(cluster) > 1 else 1.0
    box = float(span) + 15.0  # vacuum so periodic images never become neighbours
    structure = Structure(
        Lattice.cubic(box), cluster.species, cluster.cart_coords + box / 2, coords_are_cartesian=True
    )
    absorber = structure[0].specie.symbol
    row = structure_row(structure, source="feff-cluster", source_id=d.name, provenance={"path": str(inp)})
    out = Parsed(name=d.name, structure=row)
    for name in ("xmu.dat",):
        if (d / name).is_file():
            rec = read_feff_xmu(d / name, absorber=absorber)
            if (d / "chi.dat").is_file() and rec.kind == "EXAFS" and rec.k is None:
                rec.k, rec.chi = read_feff_chi(d / "chi.dat")
            out.spectra.append(
                spectrum_row(rec, structure_hash=row["content_hash"], site_index=0, provenance={"code": rec.source})
            )
    if (row["content_hash"], absorber) not in _LABELLED:
        out.sites = [lab for lab in label_sites(structure, None) if lab["site_index"] == 0]
    return out


def ingest_feff(engine, path, *, workers: int = 1, progress_factory=None) -> dict:
    items = find_feff_items(path)
    if not items:
        raise InputError(path, "no FEFF calculations found",
                         "expected materials/<id>/POSCAR + FEFF-XANES/<idx>_<El>/xmu.dat, or folders with feff.inp + xmu.dat")
    with _progress(progress_factory, len(items), "FEFF folders") as adv:
        return run_ingest(engine, parse_feff_item, items, command="ingest feff",
                          cli_args={"path": str(path), "workers": workers}, workers=workers, progress=adv,
                          labelled=existing_labelled(engine))


# ------------------------------------------------------------------------------------------- XDI
def find_xdi_files(path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise InputError(p, "path does not exist", "give an XDI file or a folder of them")
    # XDI files in the wild carry .xdi but also truncated/odd suffixes (.xd, .xxdi)
    return sorted(f for f in p.rglob("*") if f.is_file() and "xd" in f.suffix.lower())


def parse_xdi(path) -> Parsed:
    from .readers import read_xdi

    try:
        rec = read_xdi(path)
    except InputError as exc:
        return Parsed(name=str(path), errors=[str(exc)])
    except Exception as exc:
        return Parsed(name=str(path), errors=[f"{path}: unreadable ({type(exc).__name__}: {exc})"])
    row = spectrum_row(rec, structure_hash=None, site_index=None, provenance={"code": "xdi"})
    return Parsed(name=str(path), spectra=[row])


def ingest_xdi(engine, path, *, progress_factory=None) -> dict:
    files = find_xdi_files(path)
    with _progress(progress_factory, len(files), "XDI files") as adv:
        return run_ingest(engine, parse_xdi, files, command="ingest xdi", cli_args={"path": str(path)}, progress=adv)


# ---------------------------------------------------------------------------- structure files
def parse_structure_item(args) -> Parsed:
    name, sdict, source, provenance, elements = args
    from pymatgen.core import Structure

    try:
        structure = Structure.from_dict(sdict)
        row = structure_row(structure, source=source, source_id=name, provenance=provenance)
        skip = {e for e in structure.composition.chemical_system.split("-") if (row["content_hash"], e) in _LABELLED}
        return Parsed(name=name, structure=row, sites=label_sites(structure, elements, skip=skip))
    except InputError as exc:
        return Parsed(name=name, errors=[str(exc)])
    except Exception as exc:
        return Parsed(name=name, errors=[f"{name}: {type(exc).__name__}: {exc}"])


def ingest_structures(engine, path, *, elements=None, workers: int = 1, progress_factory=None) -> dict:
    from .readers import read_structures

    from .readers import _structure_kind

    p = Path(path)
    if not p.exists():
        raise InputError(p, "path does not exist", "give a structure file or a folder of them")
    # in a folder, files that are not structure files (notes, a store) are not errors
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and _structure_kind(f))
    if not files:
        raise InputError(p, "no structure files found", "expected *.cif, POSCAR/CONTCAR, *.vasp, *.json or *.extxyz")
    args, errors = [], []
    for f in files:
        try:
            for name, s in read_structures(f):
                args.append((name, s.as_dict(), "file", {"path": str(f)}, elements))
        except InputError as exc:
            if p.is_file():
                raise
            errors.append(str(exc))
    with _progress(progress_factory, len(args), "structures") as adv:
        res = run_ingest(engine, parse_structure_item, args, command="ingest structures",
                         cli_args={"path": str(path)}, workers=workers, progress=adv,
                         labelled=existing_labelled(engine))
    res["failed"] = errors + res["failed"]
    return res


# ----------------------------------------------------------------------------- Materials Project
def parse_mp_item(args) -> Parsed:
    sdict, rec, extra = args
    from pymatgen.core import Structure

    name = str(extra.get("material_id") or extra.get("spectrum_id") or "mp")
    try:
        structure = Structure.from_dict(sdict)
        idx = rec.site_index
        if idx is not None and (idx >= len(structure) or structure[idx].specie.symbol != rec.absorber):
            raise InputError(f"MP {name}", f"absorbing_index {idx} is not a {rec.absorber} site of the structure",
                             "report it to Materials Project; the document is skipped")
        row = structure_row(structure, source="mp", source_id=str(extra.get("material_id") or name),
                            provenance={"mp": {k: str(v) for k, v in extra.items()}})
        h = row["content_hash"]
        skip = {rec.absorber} if (h, rec.absorber) in _LABELLED else set()
        spec = spectrum_row(rec, structure_hash=h, site_index=idx, provenance={"code": "mp", **{k: str(v) for k, v in extra.items()}})
        return Parsed(name=name, structure=row, sites=label_sites(structure, [rec.absorber], skip=skip), spectra=[spec])
    except InputError as exc:
        return Parsed(name=name, errors=[str(exc)])


def ingest_mp(engine, *, elements, edge="K", kind="XANES", api_key=None, limit=None, rester=None,
              progress_factory=None) -> dict:
    """Materials Project XAS documents + structures (mp-api); RemoteError without key/network."""
    from .mp import fetch_xas

    items = []
    for structure, rec, extra in fetch_xas(elements=elements, edge=edge, kind=kind, api_key=api_key, rester=rester):
        items.append((structure.as_dict(), rec, extra))
        if limit and len(items) >= limit:
            break
    with _progress(progress_factory, len(items), "MP spectra") as adv:
        return run_ingest(engine, parse_mp_item, items, command="ingest mp",
                          cli_args={"elements": list(elements), "edge": edge, "kind": kind, "limit": limit},
                          progress=adv, labelled=existing_labelled(engine))


# ------------------------------------------------------------------------------ built-in library
def ingest_builtin(engine, *, dataset="default", workers: int = 1, progress_factory=None, models: bool = True) -> dict:
    """The built-in structure library (+ the embedded default dataset of FEFF spectra, if present,
    + the shipped pretrained models when `models`)."""
    from pymatgen.core import Structure

    from .dataset import DEFAULT_DIR, load_dataset
    from .library import load_library

    added = {"structures": 0, "sites": 0, "spectra": 0}
    ds = DEFAULT_DIR if dataset == "default" else (None if dataset in (None, "none") else Path(dataset))
    if ds is not None and (ds / "structures.parquet").exists():
        with _progress(progress_factory, 2, "default dataset") as adv:
            added.update(load_dataset(engine, ds, progress=adv))
    elif dataset not in ("default", None, "none"):
        raise InputError(dataset, "no dataset here", "pass a folder written by `xastruct dataset export`")
    entries = load_library()
    with engine.connect() as conn:
        have = set(conn.execute(sa.select(structures_t.c.content_hash)).scalars())
    args = []
    for e in entries:
        s = Structure.from_dict(e["structure"])
        if content_hash(s) not in have:
            args.append((e["name"], e["structure"], "builtin", e.get("provenance") or {}, None))
    with _progress(progress_factory, len(args), "library structures") as adv:
        res = run_ingest(engine, parse_structure_item, args, command="ingest builtin",
                         cli_args={"dataset": str(dataset)}, workers=workers, progress=adv,
                         labelled=existing_labelled(engine))
    for k, v in res["added"].items():
        added[k] += v
    if models:
        from .registry import import_artifacts

        added["models"] = import_artifacts(engine)["added"]  # the shipped pretrained models
    return {"added": added, "failed": res["failed"], "items": len(entries)}


# ----------------------------------------------------------------------------------- helpers
class _progress:
    """Context manager giving an `advance(n)` callable from an optional progress factory."""

    def __init__(self, factory, total: int, label: str):
        self.factory, self.total, self.label = factory, total, label
        self._cm = None

    def __enter__(self):
        if self.factory is None:
            return None
        self._cm = self.factory(self.total, self.label)
        return self._cm.__enter__()

    def __exit__(self, *exc):
        if self._cm is not None:
            return self._cm.__exit__(*exc)
        return False


__all__ = [
    "Parsed",
    "content_hash",
    "structure_row",
    "spectrum_row",
    "write_parsed",
    "ingest_feff",
    "ingest_xdi",
    "ingest_structures",
    "XAStructError",
]
