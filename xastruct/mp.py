"""Materials Project client: computed XAS (FEFF) spectra with their structures.

Uses the official ``mp_api`` client. A Materials Project XAS document (emmet-core ``XASDoc``)
carries its spectrum as a pymatgen ``XAS`` object whose ``structure`` is the structure the
spectrum was computed for, so one query returns both; no second request for structures is needed.
Spectra are either site-specific (``absorbing_index`` set; MP keeps these when the element has a
single inequivalent site) or site-weighted averages (``absorbing_index`` None).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence

from xastruct.errors import InputError, RemoteError
from xastruct.readers import (
    SpectrumRecord,
    _try_normalize,
    _validated_xy,
    check_edge,
    check_element,
    check_kind,
)

MP_API_URL = "https://api.materialsproject.org"
XAS_ENDPOINT = f"{MP_API_URL}/materials/xas/"
# MP computes K, L2, L3 and stitched "L2,3" spectra; L1 is not in the database.
MP_EDGES = ("K", "L2", "L3")
_NO_KEY_FIX = (
    "get a free key at https://next-gen.materialsproject.org/api (log in, 'API key'), then "
    "export MP_API_KEY=<key> or pass --api-key <key>"
)


def _mp_id(value) -> str | None:
    """Legacy 'mp-1234' form of an MP id (emmet's AlphaID prints as 'mp-aaaaaabe')."""
    if value is None:
        return None
    if hasattr(value, "string"):
        return str(value.string)
    try:
        from emmet.core.mpid import AlphaID

        return str(AlphaID(str(value)).string)
    except Exception:
        return str(value)


def _plain_structure(structure):
    # site-averaged spectra carry a SymmetrizedStructure; the store wants a plain Structure
    from pymatgen.core import Structure

    if type(structure) is Structure:
        return structure
    return Structure.from_sites(structure.sites)


def xasdoc_to_record(doc) -> tuple:
    """Convert one Materials Project XAS document to ``(Structure, SpectrumRecord, extra)``.

    ``doc`` is an emmet-core ``XASDoc`` or its JSON dict (as the API returns it with
    ``use_document_model=False``). Edge 'L2,3' (MP's stitched L2+L3) is refused; spectrum type
    XAFS (MP's stitched K-edge XANES+EXAFS) becomes kind EXAFS, noted in the metadata.
    ``extra`` holds the MP identifiers: material_id, spectrum_id, formula, last_updated,
    site_averaged. ``sha256`` is a hash of the spectrum content and ids (there is no file).
    """
    from emmet.core.xas import XASDoc

    if isinstance(doc, dict):
        label = f"Materials Project document {doc.get('task_id', '?')}"
        try:
            # deep copy: emmet's validators rewrite the nested spectrum dict in place
            doc = XASDoc.model_validate(copy.deepcopy(doc))
        except Exception as exc:
            raise InputError(
                label,
                f"does not match the emmet-core XASDoc schema ({exc})",
                "update mp-api/emmet-core, or report the document id",
            ) from None
    material_id = _mp_id(getattr(doc, "task_id", None))
    try:
        from emmet.core.xas import format_spectrum_id

        spectrum_id = format_spectrum_id(doc.spectrum_id, legacy=True)
    except Exception:  # no task_id: spectrum_id cannot be formed
        spectrum_id = None
    label = f"Materials Project {spectrum_id or material_id or 'document'}"

    spec = getattr(doc, "spectrum", None)
    if spec is None:
        raise InputError(label, "document has no spectrum", "query with all_fields=True")
    absorber = check_element(label, getattr(doc.absorbing_element, "symbol", doc.absorbing_element))
    mp_edge = getattr(doc.edge, "value", str(doc.edge))
    if mp_edge == "L2,3":
        raise InputError(
            label,
            "edge 'L2,3' is MP's stitched L2+L3 spectrum; XAStruct stores single edges",
            "query edge='L2' or edge='L3'",
        )
    edge = check_edge(label, mp_edge)
    mp_type = getattr(doc.spectrum_type, "value", str(doc.spectrum_type))
    kind = check_kind(label, "EXAFS" if mp_type == "XAFS" else mp_type)

    structure = _plain_structure(spec.structure)
    site_index = spec.absorbing_index
    if site_index is not None:
        site_index = int(site_index)
        if not 0 <= site_index < len(structure):
            raise InputError(
                label, f"absorbing_index {site_index} outside the {len(structure)}-site structure"
            )
        site_elements = {el.symbol for el in structure[site_index].species.elements}
        if absorber not in site_elements:
            raise InputError(
                label,
                f"absorbing_index {site_index} is a {'/'.join(sorted(site_elements))} site, "
                f"not {absorber}",
            )
    x, y = _validated_xy(label, spec.x, spec.y)

    last = getattr(doc, "last_updated", None)
    extra = {
        "material_id": material_id,
        "spectrum_id": spectrum_id,
        "formula_pretty": getattr(doc, "formula_pretty", None) or structure.reduced_formula,
        "last_updated": last.isoformat() if last is not None else None,
        "site_averaged": site_index is None,
    }
    meta = {"format": "mp_xasdoc", "mp_edge": mp_edge, "mp_spectrum_type": mp_type, **extra}
    digest = hashlib.sha256(
        json.dumps(
            {"id": spectrum_id or material_id, "site": site_index,
             "x": x.tolist(), "y": y.tolist()},
            sort_keys=True,
        ).encode()
    ).hexdigest()  # fmt: skip
    kw = dict(
        energies=x,
        mu=y,
        absorber=absorber,
        edge=edge,
        kind=kind,
        source="mp",
        sample_name=extra["formula_pretty"],
        metadata=meta,
        path=None,
        sha256=digest,
        site_index=site_index,
    )
    # MP spectra are FEFF calculations: zero baseline, E0 at the steepest point (as pymatgen's
    # XAS.e0 defines it)
    _try_normalize(kw, label, calculated=True)
    return structure, SpectrumRecord(**kw), extra


def _remote_error(what: str, exc: BaseException) -> RemoteError:
    return RemoteError(
        f"Materials Project request failed: {what} ({XAS_ENDPOINT}): "
        f"{type(exc).__name__}: {exc}. Check network connectivity to {MP_API_URL} "
        "(proxy/firewall) and that MP_API_KEY is valid."
    )


def fetch_xas(
    *,
    elements: str | Sequence[str],
    edge: str = "K",
    kind: str = "XANES",
    api_key: str | None = None,
    rester=None,
    strict: bool = False,
) -> Iterator[tuple]:
    """Yield ``(Structure, SpectrumRecord, extra)`` for every MP spectrum of the given absorbers.

    ``elements`` are absorbing elements (one ``materials.xas.search`` per element). The key is
    ``api_key`` or the ``MP_API_KEY`` environment variable; ``rester`` injects an object with
    the ``MPRester`` interface (``.materials.xas.search(...)``) instead, e.g. for tests.
    Arguments are checked and the key looked up now (errors raise here, not on first
    iteration); network errors raise :class:`RemoteError` while iterating. Documents that
    cannot be converted are skipped with a warning, or raise InputError if ``strict``.
    """
    src = "Materials Project query"
    els = [elements] if isinstance(elements, str) else list(elements)
    if not els:
        raise InputError(src, "no absorbing elements given", "pass e.g. elements=['Cu']")
    els = [check_element(src, el) for el in els]
    edge = check_edge(src, edge)
    if edge not in MP_EDGES:
        raise InputError(
            src, f"Materials Project has no {edge}-edge spectra", f"use one of {MP_EDGES}"
        )
    kind = check_kind(src, kind)
    key = None
    if rester is None:
        key = api_key or os.environ.get("MP_API_KEY")
        if not key:
            raise RemoteError(
                f"MP_API_KEY is not set, so the Materials Project cannot be queried; {_NO_KEY_FIX}"
            )
    return _fetch(els, edge, kind, key, rester, strict)


def _fetch(els, edge, kind, key, rester, strict) -> Iterator[tuple]:
    own = rester is None
    if own:
        try:
            from mp_api.client import MPRester

            # the constructor already contacts the server (heartbeat / version check)
            rester = MPRester(api_key=key, mute_progress_bars=True)
        except Exception as exc:
            raise _remote_error("connecting", exc) from exc
    try:
        for el in els:
            what = f"XAS search absorbing_element={el} edge={edge} spectrum_type={kind}"
            try:
                docs = rester.materials.xas.search(
                    absorbing_element=el, edge=edge, spectrum_type=kind, all_fields=True
                )
            except Exception as exc:  # requests/urllib3 errors, MPRestError (HTTP 4xx/5xx) ...
                raise _remote_error(what, exc) from exc
            for doc in docs:
                try:
                    yield xasdoc_to_record(doc)
                except InputError as exc:
                    if strict:
                        raise
                    warnings.warn(f"skipped: {exc}", stacklevel=2)
    finally:
        if own:
            session = getattr(rester, "session", None)
            if session is not None:
                session.close()


__all__ = ["fetch_xas", "xasdoc_to_record", "XAS_ENDPOINT"]

