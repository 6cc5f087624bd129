"""Compact random forests: a fitted scikit-learn forest's predictions without its per-node value arrays.

Why: a classifier forest keeps, for every node, a float64 fraction for every class. The shipped
all-absorber neighbour forest (200 trees, ~680k nodes, 78 classes) is ~420 MB in memory and its joblib
file takes seconds to load, yet each leaf holds only a few classes (leaves keep >= 3 training rows).
A CompactForest keeps the tree structure as scikit-learn's own ``Tree`` objects (so traversal is its
compiled ``apply``) and only the leaves' non-zero values; its predictions equal the forest's (tested).
It is written beside ``model.joblib`` (which stays the full estimator) and is what prediction loads.

    python -m xastruct.forest DIR   # add forest.npz to every forest artifact under DIR
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FILE = "forest.npz"
#: bump when the file layout changes: older files are ignored (the joblib model is read instead)
FORMAT = 1


def is_forest(estimator) -> bool:
    """A single-output scikit-learn random forest (classifier or regressor): what CompactForest holds."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    return (isinstance(estimator, (RandomForestClassifier, RandomForestRegressor))
            and hasattr(estimator, "estimators_") and getattr(estimator, "n_outputs_", 1) == 1)


class CompactForest:
    """Trees as scikit-learn ``Tree`` skeletons (node arrays, no values) + the leaves' values.

    Classifier: each leaf's non-zero class fractions as a CSR matrix (n_leaves x n_classes:
    ``leaf_ptr``, ``leaf_class``, ``leaf_prob``). Regressor: ``leaf_value`` (n_leaves,).
    ``leaf_row`` maps a node (over all trees, offset by ``offsets``) to its row in those tables."""

    def __init__(self, *, nodes: np.ndarray, offsets: np.ndarray, max_depth: np.ndarray, n_features: int,
                 leaf_row: np.ndarray, classes: np.ndarray | None = None, leaf_ptr: np.ndarray | None = None,
                 leaf_class: np.ndarray | None = None, leaf_prob: np.ndarray | None = None,
                 leaf_value: np.ndarray | None = None, n_jobs: int | None = None):
        from sklearn.tree._tree import Tree

        self.offsets, self.max_depth = np.asarray(offsets, np.int64), np.asarray(max_depth)
        self.n_features_in_ = int(n_features)
        self.leaf_row, self.classes_ = leaf_row, classes
        self.leaf_value = leaf_value
        self.leaf_matrix = None
        if classes is not None:
            import scipy.sparse

            self.leaf_ptr, self.leaf_class, self.leaf_prob = leaf_ptr, leaf_class, leaf_prob
            self.leaf_matrix = scipy.sparse.csr_matrix((leaf_prob, leaf_class, leaf_ptr),
                                                       shape=(len(leaf_ptr) - 1, len(classes)))
        self.n_jobs = n_jobs or os.cpu_count() or 1
        self.trees = []
        for i in range(len(self.offsets) - 1):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            # one output with one "class": the value array is a column of zeros, 8 bytes a node
            t = Tree(self.n_features_in_, np.array([1], dtype=np.intp), 1)
            t.__setstate__({"max_depth": int(self.max_depth[i]), "node_count": b - a,
                            "nodes": np.ascontiguousarray(nodes[a:b]), "values": np.zeros((b - a, 1, 1))})
            self.trees.append(t)

    @property
    def is_classifier(self) -> bool:
        return self.classes_ is not None

    @classmethod
    def from_estimator(cls, est, *, n_jobs: int | None = None) -> "CompactForest":
        if not is_forest(est):
            raise TypeError(f"CompactForest holds single-output random forests, not {type(est).__name__}")
        trees = [e.tree_ for e in est.estimators_]
        states = [t.__getstate__() for t in trees]
        nodes = np.concatenate([s["nodes"] for s in states])
        for field in ("impurity", "n_node_samples", "weighted_n_node_samples"):
            nodes[field] = 0  # not used by apply(); zeros make the file ~2x smaller and faster to read
        offsets = np.concatenate([[0], np.cumsum([s["node_count"] for s in states])])
        is_leaf = nodes["left_child"] == -1
        leaf_row = np.full(len(nodes), -1, dtype=np.int64)
        leaf_row[is_leaf] = np.arange(int(is_leaf.sum()))
        common = dict(nodes=nodes, offsets=offsets, max_depth=np.array([s["max_depth"] for s in states]),
                      n_features=est.n_features_in_, leaf_row=leaf_row, n_jobs=n_jobs)
        if hasattr(est, "classes_"):
            k_cls = len(est.classes_)
            # the fractions predict_proba uses: each tree's leaf value normalized to sum 1
            vals = np.concatenate([t.value[:, 0, :k_cls] for t in trees])[is_leaf]
            sums = vals.sum(axis=1, keepdims=True)
            vals = vals / np.where(sums == 0, 1.0, sums)
            r, c = np.nonzero(vals)  # row-major: each leaf's classes in order
            leaf_ptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(vals)))])
            leaf_class, leaf_prob = c.astype(np.int32), vals[r, c]
            classes = np.asarray(est.classes_)
            classes = classes.astype(str) if classes.dtype == object else classes  # no pickles in the file
            return cls(classes=classes, leaf_ptr=leaf_ptr, leaf_class=leaf_class, leaf_prob=leaf_prob, **common)
        leaf_value = np.concatenate([t.value[:, 0, 0] for t in trees])[is_leaf]
        return cls(leaf_value=leaf_value, **common)

    # -- prediction --------------------------------------------------------------------------------

    #: rows predicted at a time (bounds the (rows x trees) leaf matrix: ~20 MB)
    CHUNK = 8192

    def _leaf_rows(self, X) -> np.ndarray:
        """(n, n_trees) rows of the leaves X falls into; apply() runs without the GIL, a thread a core."""
        X = np.ascontiguousarray(X, dtype=np.float32)  # what scikit-learn's trees split on
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} feature columns, got array of shape {X.shape}")

        def one(i):
            return self.leaf_row[self.trees[i].apply(X) + self.offsets[i]]

        if self.n_jobs == 1 or len(X) < 1000:
            return np.stack(list(map(one, range(len(self.trees)))), axis=1)
        with ThreadPoolExecutor(max_workers=self.n_jobs) as pool:
            return np.stack(list(pool.map(one, range(len(self.trees)))), axis=1)

    def predict_proba(self, X) -> np.ndarray:
        import scipy.sparse

        if not self.is_classifier:
            raise TypeError("predict_proba needs a classifier forest")
        n_trees, n = len(self.trees), len(X)
        out = np.zeros((n, len(self.classes_)))
        for a in range(0, n, self.CHUNK):
            leaves = self._leaf_rows(X[a:a + self.CHUNK])
            m = len(leaves)
            # sum over trees of each leaf's class fractions = (rows x leaves indicator) @ leaf matrix
            pick = scipy.sparse.csr_matrix(
                (np.ones(leaves.size), leaves.ravel(), np.arange(0, leaves.size + 1, n_trees)),
                shape=(m, self.leaf_matrix.shape[0]))
            out[a:a + m] = (pick @ self.leaf_matrix).toarray()
        return out / n_trees

    def predict(self, X) -> np.ndarray:
        if self.is_classifier:
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        return self.tree_predictions(X).mean(axis=0)

    def tree_predictions(self, X) -> np.ndarray:
        """(n_trees, n) each regression tree's prediction (their spread is the forest's uncertainty)."""
        if self.is_classifier:
            raise TypeError("tree_predictions needs a regression forest")
        return self.leaf_value[self._leaf_rows(X)].T

    # -- files -------------------------------------------------------------------------------------

    def save(self, path, *, source: str = "") -> Path:
        """*source*: the digest of the file this forest was made from (see :func:`digest`)."""
        path = Path(path)
        # the node arrays live in the trees only (a second copy would double the memory)
        nodes = np.concatenate([t.__getstate__()["nodes"] for t in self.trees])
        arrays = dict(format=np.array(FORMAT), source=np.array(source), nodes=nodes, offsets=self.offsets,
                      max_depth=self.max_depth, n_features=np.array(self.n_features_in_), leaf_row=self.leaf_row)
        if self.is_classifier:
            arrays.update(classes=self.classes_, leaf_ptr=self.leaf_ptr, leaf_class=self.leaf_class,
                          leaf_prob=self.leaf_prob)
        else:
            arrays.update(leaf_value=self.leaf_value)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)  # never a half-written file under the real name
        return path

    @classmethod
    def load(cls, path, *, source: str | None = None, n_jobs: int | None = None) -> "CompactForest | None":
        """The forest in *path*; None for a file of another format version or, given *source*, one made
        from another file (a model.joblib rewritten since)."""
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or int(z["format"]) != FORMAT:
                return None
            if source is not None and str(z["source"]) != source:
                return None
            get = {k: z[k] for k in z.files}
        return cls(nodes=get["nodes"], offsets=get["offsets"], max_depth=get["max_depth"],
                   n_features=int(get["n_features"]), leaf_row=get["leaf_row"], classes=get.get("classes"),
                   leaf_ptr=get.get("leaf_ptr"), leaf_class=get.get("leaf_class"), leaf_prob=get.get("leaf_prob"),
                   leaf_value=get.get("leaf_value"), n_jobs=n_jobs)


def digest(path) -> str:
    """sha256 of a file: ties forest.npz to the model.joblib it was made from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_beside(model_file, estimator) -> Path | None:
    """forest.npz beside *model_file* (the joblib of *estimator*) if the estimator is a forest."""
    if not is_forest(estimator):
        return None
    target = Path(model_file).with_name(FILE)
    return CompactForest.from_estimator(estimator).save(target, source=digest(model_file))


def compact_artifacts(root) -> list[Path]:
    """Write forest.npz beside every forest's model.joblib under *root* that lacks a current one."""
    import joblib

    written = []
    for model in sorted(Path(root).rglob("model.joblib")):
        target = model.with_name(FILE)
        if target.is_file() and CompactForest.load(target, source=digest(model)) is not None:
            continue
        if (p := write_beside(model, joblib.load(model))) is not None:
            written.append(p)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:
        for p in compact_artifacts(arg):
            print(p)
