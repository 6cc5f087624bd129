"""Compact forests predict exactly what the scikit-learn forest they were made from predicts."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from xastruct import forest as fo
from xastruct import inverse as inv

PRETRAINED = Path(fo.__file__).parent / "data" / "pretrained"


def _data(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    score = X[:, 0] + 0.5 * X[:, 1] ** 2 - X[:, 2] * X[:, 3]
    return X, score


@pytest.mark.parametrize("labels", ["str", "object", "int"])
@pytest.mark.parametrize("leaf", [1, 3])
def test_classifier_probabilities_equal_sklearn(labels, leaf):
    X, score = _data()
    y = np.digitize(score, [-1.5, -0.5, 0.3, 1.2, 2.5])  # 6 classes, unevenly filled
    if labels != "int":
        y = np.array(["O", "S", "Cl", "F", "N", "Se"])[y].astype(object if labels == "object" else str)
    est = RandomForestClassifier(n_estimators=9, min_samples_leaf=leaf, random_state=1).fit(X, y)
    cf = fo.CompactForest.from_estimator(est, n_jobs=1)
    Xt = _data(n=500, seed=2)[0]
    np.testing.assert_allclose(cf.predict_proba(Xt), est.predict_proba(Xt), rtol=0, atol=1e-12)
    assert list(map(str, cf.classes_)) == list(map(str, est.classes_))
    assert (cf.predict(Xt).astype(str) == est.predict(Xt).astype(str)).all()


def test_regressor_tree_predictions_equal_sklearn():
    X, score = _data()
    est = RandomForestRegressor(n_estimators=7, min_samples_leaf=2, random_state=0).fit(X, score)
    cf = fo.CompactForest.from_estimator(est, n_jobs=1)
    Xt = _data(n=400, seed=3)[0]
    per_tree = np.stack([t.predict(Xt) for t in est.estimators_])
    np.testing.assert_allclose(cf.tree_predictions(Xt), per_tree, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cf.predict(Xt), est.predict(Xt), rtol=0, atol=1e-12)


def test_threads_chunks_and_file_round_trip_change_nothing(tmp_path, monkeypatch):
    X, score = _data(n=400)
    y = (score > 0.2).astype(int) + (score > 1.5)
    est = RandomForestClassifier(n_estimators=12, random_state=0).fit(X, y)
    Xt = _data(n=2500, seed=4)[0]  # >= 1000 rows: the threaded path
    want = est.predict_proba(Xt)
    model = tmp_path / "model.joblib"
    model.write_bytes(b"stand-in for the joblib file")
    path = fo.CompactForest.from_estimator(est, n_jobs=2).save(tmp_path / fo.FILE, source=fo.digest(model))
    monkeypatch.setattr(fo.CompactForest, "CHUNK", 700)  # several chunks, the last one short
    back = fo.CompactForest.load(path, source=fo.digest(model), n_jobs=2)
    np.testing.assert_allclose(back.predict_proba(Xt), want, rtol=0, atol=1e-12)
    # made from another model file, or of another layout: not used
    assert fo.CompactForest.load(path, source="0" * 64) is None
    monkeypatch.setattr(fo, "FORMAT", fo.FORMAT + 1)
    assert fo.CompactForest.load(path) is None
    with pytest.raises(ValueError, match="expected 6 feature columns"):
        back.predict_proba(Xt[:, :5])


def test_members_predict_through_the_compact_forest_and_fall_back_when_stale(tmp_path):
    X, score = _data()
    y = (score > 0.2).astype(int)
    d = tmp_path / "seed0"
    a = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    inv.SklearnMember(estimator=a).save(d)
    assert (d / fo.FILE).is_file()
    m = inv.load_member(d, device="cpu")
    assert isinstance(m.predictor, fo.CompactForest) and m._estimator is None  # joblib not read
    np.testing.assert_allclose(m.predictor.predict_proba(X), a.predict_proba(X), atol=1e-12)
    assert m.estimator.n_estimators == 4  # read on demand
    # model.joblib replaced by another tool, forest.npz left behind: the joblib model predicts
    import joblib

    b = RandomForestClassifier(n_estimators=6, random_state=1).fit(X, 1 - y)
    joblib.dump(b, d / inv.SKLEARN_FILE)
    m2 = inv.load_member(d, device="cpu")
    assert m2.predictor is m2.estimator and m2.estimator.n_estimators == 6
    # an unreadable forest.npz (truncated copy): the joblib model predicts
    (d / fo.FILE).write_bytes(b"not a zip file")
    m3 = inv.load_member(d, device="cpu")
    assert m3.predictor is m3.estimator and m3.estimator.n_estimators == 6
    # not a forest: no forest.npz, the estimator predicts
    from sklearn.dummy import DummyClassifier

    inv.SklearnMember(estimator=DummyClassifier().fit(X, y)).save(tmp_path / "dummy")
    assert not (tmp_path / "dummy" / fo.FILE).exists()
    assert isinstance(inv.load_member(tmp_path / "dummy").predictor, DummyClassifier)


def test_shipped_forests_have_a_current_compact_file():
    """Every shipped forest comes with the forest.npz made from its model.joblib
    (`python -m xastruct.forest xastruct/data/pretrained` after retraining)."""
    forests = [p.parent for p in PRETRAINED.rglob("config.json")
               if json.loads(p.read_text()).get("class", "").startswith("RandomForest")]
    assert forests, "no shipped forest found"
    for d in forests:
        with np.load(d / fo.FILE) as z:
            assert str(z["source"]) == fo.digest(d / inv.SKLEARN_FILE), d


def test_compact_artifacts_writes_missing_or_stale_files_only(tmp_path):
    """`python -m xastruct.forest DIR`: forest.npz for each forest lacking a current one, once."""
    import joblib

    X, score = _data(n=200)
    d = tmp_path / "cn" / "seed0"
    d.mkdir(parents=True)
    joblib.dump(RandomForestClassifier(n_estimators=3, random_state=0).fit(X, score > 0), d / inv.SKLEARN_FILE)
    assert fo.compact_artifacts(tmp_path) == [d / fo.FILE]
    assert fo.compact_artifacts(tmp_path) == []  # current: left alone
    joblib.dump(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, score > 1), d / inv.SKLEARN_FILE)
    assert fo.compact_artifacts(tmp_path) == [d / fo.FILE]  # made from the old joblib: rewritten
    assert len(fo.CompactForest.load(d / fo.FILE, source=fo.digest(d / inv.SKLEARN_FILE)).trees) == 5
