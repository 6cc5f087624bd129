-- One row per spectrum with its absorbing site's structural labels and the structure's formula.
-- Measured spectra (no structure) appear with NULL labels.
CREATE VIEW spectra_with_labels AS
SELECT
    sp.id            AS spectrum_id,
    sp.absorber,
    sp.edge,
    sp.kind,
    sp.source,
    sp.e0,
    sp.normalized,
    sp.sample_name,
    st.id            AS structure_id,
    st.source        AS structure_source,
    st.source_id,
    st.formula,
    si.id            AS site_id,
    si.site_index,
    si.multiplicity,
    si.cn,
    si.mnnd,
    si.dominant_neighbor,
    si.neighbors,
    si.label_method
FROM spectra sp
LEFT JOIN structures st ON st.id = sp.structure_id
LEFT JOIN sites si ON si.id = sp.site_id
