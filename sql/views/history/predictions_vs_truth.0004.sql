-- Latest predictions beside the truth where it is known: the site's own structural labels for the
-- inverse tasks (cn, mnnd, neighbor), the stored reference spectrum for forward predictions.
-- abs_error: |predicted - true| (CN, MNND in A; forward: MAE of normalized mu on the model grid).
-- correct: class predictions (CN, neighbour) equal to the label.
-- neighbour rows: true_period = the period of the true dominant neighbour, to compare with the
-- predicted neighbor_period (class probabilities summed per period; per_element_metrics.period_accuracy).
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
    CASE WHEN lp.task = 'neighbor' THEN CASE
         WHEN si.dominant_neighbor IN ('H', 'He') THEN 1
         WHEN si.dominant_neighbor IN ('Li', 'Be', 'B', 'C', 'N', 'O', 'F', 'Ne') THEN 2
         WHEN si.dominant_neighbor IN ('Na', 'Mg', 'Al', 'Si', 'P', 'S', 'Cl', 'Ar') THEN 3
         WHEN si.dominant_neighbor IN ('K', 'Ca', 'Sc', 'Ti', 'V', 'Cr', 'Mn', 'Fe', 'Co', 'Ni', 'Cu', 'Zn', 'Ga', 'Ge', 'As', 'Se', 'Br', 'Kr') THEN 4
         WHEN si.dominant_neighbor IN ('Rb', 'Sr', 'Y', 'Zr', 'Nb', 'Mo', 'Tc', 'Ru', 'Rh', 'Pd', 'Ag', 'Cd', 'In', 'Sn', 'Sb', 'Te', 'I', 'Xe') THEN 5
         WHEN si.dominant_neighbor IN ('Cs', 'Ba', 'La', 'Ce', 'Pr', 'Nd', 'Pm', 'Sm', 'Eu', 'Gd', 'Tb', 'Dy', 'Ho', 'Er', 'Tm', 'Yb', 'Lu', 'Hf', 'Ta', 'W', 'Re', 'Os', 'Ir', 'Pt', 'Au', 'Hg', 'Tl', 'Pb', 'Bi', 'Po', 'At', 'Rn') THEN 6
         WHEN si.dominant_neighbor IN ('Fr', 'Ra', 'Ac', 'Th', 'Pa', 'U', 'Np', 'Pu', 'Am', 'Cm', 'Bk', 'Cf', 'Es', 'Fm', 'Md', 'No', 'Lr', 'Rf', 'Db', 'Sg', 'Bh', 'Hs', 'Mt', 'Ds', 'Rg', 'Cn', 'Nh', 'Fl', 'Mc', 'Lv', 'Ts', 'Og') THEN 7
    END END AS true_period,
    lp.reference_spectrum_id,
    lp.reference_cosine
FROM latest_predictions lp
JOIN sites si ON si.id = lp.site_id
WHERE (lp.task = 'forward' AND lp.reference_spectrum_id IS NOT NULL)
   OR (lp.task = 'cn' AND si.cn IS NOT NULL)
   OR (lp.task = 'mnnd' AND si.mnnd IS NOT NULL)
   OR (lp.task = 'neighbor' AND si.dominant_neighbor IS NOT NULL)
