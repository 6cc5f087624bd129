-- Error of the latest predictions per task / element / edge / kind, over targets with a known truth
-- (see predictions_vs_truth). closed_loop rows (inverse models run on forward-predicted spectra)
-- are reported separately from those on stored spectra. period_accuracy: neighbour rows, the
-- predicted neighbour period vs the true neighbour's.
CREATE VIEW per_element_metrics AS
SELECT
    task,
    element,
    edge,
    kind,
    closed_loop,
    COUNT(*)                                                     AS n,
    AVG(abs_error)                                               AS mae,
    AVG(CASE WHEN correct THEN 1.0 WHEN NOT correct THEN 0.0 END) AS accuracy,
    AVG(reference_cosine)                                        AS mean_cosine,
    AVG(CASE WHEN neighbor_period = true_period THEN 1.0
             WHEN neighbor_period <> true_period THEN 0.0 END) AS period_accuracy,
    MAX(model_name)                                              AS model_name
FROM predictions_vs_truth
GROUP BY task, element, edge, kind, closed_loop
