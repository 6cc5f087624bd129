-- Example queries for `xastruct sql "..."` (DuckDB syntax; PostgreSQL differences noted).

-- Spectra per absorbing element, edge, kind and source
SELECT absorber, edge, kind, source, count(*) AS n FROM spectra GROUP BY ALL ORDER BY n DESC;

-- Coordination statistics of the Cu sites that have a spectrum
SELECT cn, dominant_neighbor, count(*) AS n, round(avg(mnnd), 3) AS mean_mnnd
FROM spectra_with_labels WHERE absorber = 'Cu' GROUP BY cn, dominant_neighbor ORDER BY n DESC;

-- Octahedral Fe sites with short Fe-O bonds
SELECT s.formula, si.site_index, si.mnnd
FROM sites si JOIN structures s ON s.id = si.structure_id
WHERE si.element = 'Fe' AND si.cn = 6 AND si.dominant_neighbor = 'O' AND si.mnnd < 2.0;

-- Measured spectra (no structure) with their sample names and E0
SELECT absorber, edge, sample_name, e0, len(energies) AS points   -- PostgreSQL: cardinality(energies)
FROM spectra WHERE structure_id IS NULL ORDER BY absorber;

-- FEFF jobs: throughput and failures per code
SELECT code, kind, status, count(*) AS n, round(avg(seconds), 2) AS mean_s FROM jobs GROUP BY ALL;

-- FEFF10 XANES spectra that needed the no-SCF fallback
SELECT absorber, structure_id FROM spectra
WHERE source = 'feff10' AND provenance->>'scf_fallback' = 'true';
