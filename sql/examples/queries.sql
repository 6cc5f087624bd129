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

-- ---------------------------------------------------------------- screening results (xastruct screen)

-- What was predicted, per task and element (newest model only)
SELECT task, element, kind, target, count(*) AS n FROM latest_predictions GROUP BY ALL ORDER BY task, element;

-- Fe sites predicted 4-coordinated by O with a predicted MNND below 1.9 A (inverse on stored spectra)
SELECT cn.formula, cn.source_id, cn.site_index, mn.value AS mnnd, mn.uncertainty AS mnnd_sigma
FROM latest_predictions cn
JOIN latest_predictions nb ON nb.spectrum_id = cn.spectrum_id AND nb.task = 'neighbor'
JOIN latest_predictions mn ON mn.spectrum_id = cn.spectrum_id AND mn.task = 'mnnd'
WHERE cn.task = 'cn' AND cn.element = 'Fe' AND cn.value = 4 AND nb.label = 'O' AND mn.value < 1.9;

-- Co structures whose predicted XANES has a strong pre-edge: max normalized mu within 8 eV below E0
-- (forward predictions: energies are E - E0 in eV; PostgreSQL: (SELECT max(x) FROM unnest(mu[1:10]) x))
SELECT formula, source_id, site_index, list_max(list_slice(mu, 1, 10)) AS pre_edge
FROM latest_predictions
WHERE task = 'forward' AND element = 'Co' AND kind = 'XANES' AND list_max(list_slice(mu, 1, 10)) > 0.2
ORDER BY pre_edge DESC;

-- Closed loop: does the CN recovered from the predicted spectrum match the structure's own?
SELECT element, kind, closed_loop, n, round(accuracy, 3) AS accuracy
FROM per_element_metrics WHERE task = 'cn' ORDER BY element, closed_loop;

-- Worst forward predictions against a stored reference spectrum
SELECT formula, site_index, element, kind, round(abs_error, 4) AS mae, round(reference_cosine, 4) AS cosine
FROM predictions_vs_truth WHERE task = 'forward' ORDER BY abs_error DESC LIMIT 10;

-- Measured spectra (no structure) and what the models read from them
SELECT s.sample_name, p.task, p.value, p.label, round(p.uncertainty, 3) AS sigma
FROM latest_predictions p JOIN spectra s ON s.id = p.spectrum_id
WHERE s.structure_id IS NULL ORDER BY s.sample_name, p.task;

-- Neighbour element vs its period (row of the periodic table, class probabilities summed over it):
-- where the element is missed, is the period still right?
SELECT element, kind, closed_loop, n, round(accuracy, 2) AS element_accuracy,
       round(period_accuracy, 2) AS period_accuracy
FROM per_element_metrics WHERE task = 'neighbor' ORDER BY element, kind, closed_loop;

-- Sites read as bonded to a 3d metal (period 4) with confidence, whatever element the top class is
SELECT formula, site_index, element, label, round(period_probability, 2) AS p_period
FROM latest_predictions
WHERE task = 'neighbor' AND neighbor_period = 4 AND period_probability > 0.8 ORDER BY p_period DESC LIMIT 20;

-- The elements table: CN and distance of every absorber's sites by the neighbour's group of the
-- periodic table (e.g. 16: O, S, Se, Te)
SELECT s.element, n.group_number AS neighbour_group, count(*) AS sites, round(avg(s.cn), 2) AS mean_cn,
       round(avg(s.mnnd), 3) AS mean_mnnd
FROM sites s JOIN elements n ON n.symbol = s.dominant_neighbor
GROUP BY 1, 2 ORDER BY 1, 2;
