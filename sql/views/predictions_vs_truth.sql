-- Latest predictions beside the truth where it is known: the site's own structural labels for the
-- inverse tasks (cn, mnnd, neighbor), the stored reference spectrum for forward predictions.
-- abs_error: |predicted - true| (CN, MNND in A; forward: MAE of normalized mu on the model grid).
-- correct: class predictions (CN, neighbour) equal to the label.
-- neighbour rows: true_period = the period of the true dominant neighbour (the elements table), to
-- compare with the predicted neighbor_period (class probabilities summed per period;
-- per_element_metrics.period_accuracy).
CREATE VIEW predictions_vs_truth AS
SELECT
    lp.prediction_id,
    lp.task,
    lp.element,
    lp.edge,
    lp.kind,
    lp.target,
    lp.closed_loop,
    lp.structure_id,
    lp.formula,
    lp.source_id,
    lp.site_id,
    lp.site_index,
    lp.spectrum_id,
    lp.model_id,
    lp.model_name,
    lp.arch,
    lp.value,
    lp.label,
    lp.uncertainty,
    lp.neighbor_period,
    lp.period_probability,
    CASE lp.task WHEN 'cn' THEN CAST(si.cn AS DOUBLE PRECISION)
                 WHEN 'mnnd' THEN si.mnnd END                        AS true_value,
    CASE lp.task WHEN 'cn' THEN CAST(si.cn AS VARCHAR)
                 WHEN 'neighbor' THEN si.dominant_neighbor END        AS true_label,
    CASE lp.task WHEN 'cn' THEN ABS(lp.value - si.cn)
                 WHEN 'mnnd' THEN ABS(lp.value - si.mnnd)
                 WHEN 'forward' THEN lp.reference_mae END             AS abs_error,
    CASE lp.task WHEN 'cn' THEN lp.label = CAST(si.cn AS VARCHAR)
                 WHEN 'neighbor' THEN lp.label = si.dominant_neighbor END AS correct,
    CASE WHEN lp.task = 'neighbor' THEN el.period END               AS true_period,
    lp.reference_spectrum_id,
    lp.reference_cosine
FROM latest_predictions lp
JOIN sites si ON si.id = lp.site_id
LEFT JOIN elements el ON el.symbol = si.dominant_neighbor
WHERE (lp.task = 'forward' AND lp.reference_spectrum_id IS NOT NULL)
   OR (lp.task = 'cn' AND si.cn IS NOT NULL)
   OR (lp.task = 'mnnd' AND si.mnnd IS NOT NULL)
   OR (lp.task = 'neighbor' AND si.dominant_neighbor IS NOT NULL)
