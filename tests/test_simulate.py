"""`xastruct simulate`: dask LocalCluster with 2 workers, provenance, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import sqlalchemy as sa
from click.testing import CliRunner
from pymatgen.core import Lattice, Structure

from xastruct import store
from xastruct.cli import main


def _structures(folder):
    folder.mkdir()
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.168), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(folder / "NiO.cif"))
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]).to(filename=str(folder / "Cu.cif"))
    Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                              [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]).to(filename=str(folder / "ZnO.cif"))
    Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                              [[0, 0, 0], [0.305, 0.305, 0]]).to(filename=str(folder / "TiO2.cif"))


ELEMENTS = "Ni,Cu,Zn,Ti,O"
N_JOBS = 7  # Ni, Cu, Zn, Ti + one O orbit in each of NiO, ZnO, TiO2


def _rows(url, q):
    with store.get_engine(url).connect() as c:
        return c.execute(sa.text(q)).all()


def test_simulate_resumes_after_kill(tmp_path):
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    _structures(tmp_path / "cifs")
    res = CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs"), "--db", url])
    assert res.exit_code == 0, res.output
    store.dispose_engines()  # let the subprocess open the DuckDB file
    # one job per transaction: on an idle machine all 7 jobs can finish inside the default 3 s window
    cmd = [sys.executable, "-m", "xastruct.cli", "simulate", "--elements", ELEMENTS, "--kind", "EXAFS",
           "--workers", "2", "--commit-every", "1", "--db", url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill -9 right after the first batch is committed, i.e. in the middle of the run
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        if line.startswith("committed:") or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    first = _rows(url, "SELECT status, count(*) FROM jobs GROUP BY status")
    store.dispose_engines()
    done_first = dict(first).get("done", 0) + dict(first).get("failed", 0)
    assert sum(n for _, n in first) == N_JOBS  # planning committed before any job ran
    assert 0 < done_first < N_JOBS, first
    # the rerun finishes the rest, with the same 2-worker LocalCluster
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = _rows(url, "SELECT status, spectrum_id, reason FROM jobs")
    assert len(jobs) == N_JOBS and all(s == "done" and sid is not None for s, sid, _ in jobs), jobs
    spectra = _rows(url, "SELECT key, site_id, absorber, provenance, normalized, k, chi FROM spectra")
    assert len(spectra) == N_JOBS == len({r[0] for r in spectra})  # nothing duplicated
    for key, site_id, absorber, prov, normalized, k, chi in spectra:
        prov = prov if isinstance(prov, dict) else json.loads(prov)
        assert site_id is not None and normalized
        assert prov["code"] == "feff8l" and prov["input_hash"] and prov["params"]["sig2"] > 0
        assert prov["versions"] and k is not None and len(k) == len(chi) > 50
    # every spectrum's site is the representative of its orbit, of the right element
    reps = _rows(url, "SELECT si.element, si.site_index, si.equivalent_to FROM spectra sp "
                      "JOIN sites si ON si.id = sp.site_id")
    assert sorted(r[0] for r in reps) == sorted(["Ni", "Cu", "Zn", "Ti", "O", "O", "O"])
    assert all(r[1] == r[2] for r in reps)
    # a third run has nothing to do
    res = CliRunner().invoke(main, ["simulate", "--elements", ELEMENTS, "--kind", "EXAFS", "--db", url])
    assert res.exit_code == 0 and len(_rows(url, "SELECT id FROM spectra")) == N_JOBS


def test_simulate_refuses_wrong_code(tmp_path):
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    res = CliRunner().invoke(main, ["simulate", "--elements", "Cu", "--kind", "EXAFS", "--code", "feff10",
                                    "--db", url])
    assert res.exit_code != 0 and "feff10 does not compute EXAFS" in res.output


def test_failed_job_is_recorded_not_fatal(tmp_path):
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    _structures(tmp_path / "cifs")
    CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs" / "Cu.cif"), "--db", url])
    # a 1 ms timeout cannot finish: the job must be marked failed with its reason
    res = CliRunner().invoke(main, ["simulate", "--elements", "Cu", "--kind", "EXAFS", "--timeout", "0.001",
                                    "--workers", "1", "--db", url])
    assert res.exit_code == 0, res.output
    (status, reason), = _rows(url, "SELECT status, reason FROM jobs")
    assert status == "failed" and reason
    assert _rows(url, "SELECT count(*) FROM spectra")[0][0] == 0


def test_jobs_adopt_spectra_loaded_from_a_dataset(tmp_path, db_url):
    """A store rebuilt from an exported dataset does not recompute spectra it already has."""
    from xastruct import dataset

    src = f"duckdb:///{tmp_path / 'src.duckdb'}"
    _structures(tmp_path / "cifs")
    CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs" / "Cu.cif"), "--db", src])
    res = CliRunner().invoke(main, ["simulate", "--elements", "Cu", "--kind", "EXAFS", "--workers", "1", "--db", src])
    assert res.exit_code == 0, res.output
    dataset.export_dataset(store.get_engine(src), tmp_path / "ds", sources=("file",))
    dataset.load_dataset(store.get_engine(db_url), tmp_path / "ds")
    res = CliRunner().invoke(main, ["simulate", "--elements", "Cu", "--kind", "EXAFS", "--workers", "1",
                                    "--db", db_url])
    assert res.exit_code == 0, res.output
    assert _rows(db_url, "SELECT status, spectrum_id IS NOT NULL FROM jobs") == [("done", True)]
    assert _rows(db_url, "SELECT count(*) FROM spectra")[0][0] == 1


def test_limit_is_per_element_not_per_run(tmp_path):
    """--limit N: at most N sites of EACH element are planned and run (not N jobs in total)."""
    from xastruct import simulate as sim

    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    _structures(tmp_path / "cifs")
    res = CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs"), "--db", url])
    assert res.exit_code == 0, res.output
    eng = store.get_engine(url)
    info = sim.plan(eng, elements=["O", "Ni", "Zn"], kind="EXAFS", limit=2)
    todo = sim.pending_jobs(eng, elements=["O", "Ni", "Zn"], edge="K", kind="EXAFS", code="feff8l", keys=info["keys"])
    per_el = {el: sum(1 for j in todo if j["absorber"] == el) for el in ("O", "Ni", "Zn")}
    assert per_el == {"O": 2, "Ni": 1, "Zn": 1}  # O occurs in three structures: capped at 2
    # a later plan with a smaller limit runs only its own jobs, though more are pending
    info1 = sim.plan(eng, elements=["O"], kind="EXAFS", limit=1)
    assert len(sim.pending_jobs(eng, elements=["O"], edge="K", kind="EXAFS", code="feff8l", keys=info1["keys"])) == 1
    store.dispose_engines()


def test_limit_keeps_computed_sites_then_samples_stably(tmp_path):
    """--limit N picks the sites already simulated first (raising a limit keeps them), then a stable
    pseudo-random sample: the same plan twice gives the same sites, and a larger limit extends it."""
    from xastruct import simulate as sim

    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    _structures(tmp_path / "cifs")
    res = CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs"), "--db", url])
    assert res.exit_code == 0, res.output
    eng = store.get_engine(url)
    all_o = sim.plan(eng, elements=["O"], kind="EXAFS")["keys"]
    assert len(all_o) == 3
    one, again = (sim.plan(eng, elements=["O"], kind="EXAFS", limit=1)["keys"] for _ in range(2))
    two = sim.plan(eng, elements=["O"], kind="EXAFS", limit=2)["keys"]
    assert one == again and one < two < all_o
    # mark a site outside the 1-site sample as computed: it becomes the 1-site pick
    (other,) = sorted(all_o - one)[:1]
    with eng.begin() as c:
        store.bulk_insert(c, "spectra", [dict(key="stored-O", absorber="O", edge="K", kind="EXAFS", source="feff8l",
                                               energies=[1.0, 2.0], mu=[0.0, 1.0], normalized=True,
                                               provenance={"job_key": other})])
    assert sim.plan(eng, elements=["O"], kind="EXAFS", limit=1)["keys"] == {other}
    store.dispose_engines()


def test_dominant_neighbor_restricts_sites(tmp_path):
    """--dominant-neighbor O plans only the sites whose dominant neighbour is O (oxide sites): NiO's
    and ZnO's metal sites, not Cu metal's; combined with --limit the cap counts only those sites."""
    from xastruct import simulate as sim

    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    _structures(tmp_path / "cifs")
    res = CliRunner().invoke(main, ["ingest", "structures", str(tmp_path / "cifs"), "--db", url])
    assert res.exit_code == 0, res.output
    eng = store.get_engine(url)
    info = sim.plan(eng, elements=["Ni", "Cu", "Zn", "O"], kind="EXAFS", dominant=["O"])
    todo = sim.pending_jobs(eng, elements=["Ni", "Cu", "Zn", "O"], edge="K", kind="EXAFS", code="feff8l",
                            keys=info["keys"])
    assert sorted(j["absorber"] for j in todo) == ["Ni", "Zn"]
    store.dispose_engines()
    # the CLI runs exactly those (Ni, Zn); a rerun runs nothing
    for _ in range(2):
        res = CliRunner().invoke(main, ["simulate", "--elements", "Ni,Cu,Zn", "--kind", "EXAFS", "--workers", "1",
                                        "--dominant-neighbor", "O", "--db", url])
        assert res.exit_code == 0, res.output
    assert _rows(url, "SELECT absorber FROM spectra ORDER BY absorber") == [("Ni",), ("Zn",)]


def test_interleave_round_robins_absorbers_keeping_order():
    from xastruct.simulate import interleave

    jobs = [{"absorber": a, "n": i} for i, a in enumerate(["Fe", "Fe", "Fe", "Ni", "Ni", "Cu"])]
    out = [(j["absorber"], j["n"]) for j in interleave(jobs)]
    assert out == [("Fe", 0), ("Ni", 3), ("Cu", 5), ("Fe", 1), ("Ni", 4), ("Fe", 2)]
