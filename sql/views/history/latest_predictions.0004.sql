-- The newest model's prediction for every target: one row per (task, element, edge, kind, target
-- kind, site/spectrum/input prediction). A newer model version adds rows to `predictions`; this view
-- shows only the newest. Joined with the model, structure and site for direct querying.
CREATE VIEW latest_predictions AS
SELECT * FROM (
    SELECT
        p.id                AS prediction_id,
        p.task,
        p.element,
        p.edge,
        p.kind,
        p.target,
        p.value,
        p.label,
        p.uncertainty,
        p.probabilities,
        p.neighbor_period,
        p.period_probability,
        p.energies,
        p.mu,
        p.reference_spectrum_id,
        p.reference_mae,
        p.reference_cosine,
        p.input_prediction_id,
        p.input_prediction_id IS NOT NULL AS closed_loop,
        p.spectrum_id,
        p.site_id,
        p.structure_id,
        st.formula,
        st.source           AS structure_source,
        st.source_id,
        si.site_index,
        m.id                AS model_id,
        m.name              AS model_name,
        m.arch,
        m.version           AS model_version,
        p.created_at,
        row_number() OVER (
            PARTITION BY p.task, p.element, p.edge, p.kind, p.target,
                         COALESCE(p.site_id, -1), COALESCE(p.spectrum_id, -1),
                         p.input_prediction_id IS NULL
            ORDER BY m.created_at DESC, m.id DESC, p.id DESC
        ) AS recency
    FROM predictions p
    JOIN models m ON m.id = p.model_id
    LEFT JOIN structures st ON st.id = p.structure_id
    LEFT JOIN sites si ON si.id = p.site_id
) ranked
WHERE recency = 1
