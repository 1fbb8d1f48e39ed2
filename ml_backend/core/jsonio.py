"""JSON responses, with a fast path for byte arrays (brush RLE of a large mask is hundreds of
thousands of small integers; ``json`` writes those one Python int at a time)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flask.json.provider import DefaultJSONProvider

_COMMA = ord(",")
_ZERO = ord("0")


def uint8_array_json(values: np.ndarray) -> str:
    """``values`` (1-D uint8) as a compact JSON array, the same text ``json.dumps`` with
    ``separators=(",", ":")`` gives for ``values.tolist()``, built with array operations."""
    flat = np.asarray(values, dtype=np.uint8).reshape(-1).astype(np.uint16)
    if flat.size == 0:
        return "[]"
    chars = np.empty((flat.size, 4), dtype=np.uint8)
    chars[:, 0] = flat // 100 + _ZERO
    chars[:, 1] = flat // 10 % 10 + _ZERO
    chars[:, 2] = flat % 10 + _ZERO
    chars[:, 3] = _COMMA
    keep = np.ones((flat.size, 4), dtype=bool)
    keep[:, 0] = flat >= 100  # no leading zeros
    keep[:, 1] = flat >= 10
    keep[-1, 3] = False  # no comma after the last value
    return "[" + chars[keep].tobytes().decode("ascii") + "]"


class ArrayJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, writing 1-D uint8 numpy arrays with :func:`uint8_array_json`
    (other numpy values fall through to Flask's errors, as before)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        arrays: list[np.ndarray] = []

        def default(value: Any) -> Any:
            if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
                arrays.append(value)
                return f"\0array{len(arrays) - 1}\0"
            return DefaultJSONProvider.default(value)

        kwargs["default"] = default
        text = super().dumps(obj, **kwargs)
        for i, array in enumerate(arrays):
            text = text.replace(json.dumps(f"\0array{i}\0"), uint8_array_json(array), 1)
        return text


def plain(value: Any) -> Any:
    """``value`` with numpy arrays turned into lists, for clients that serialise JSON
    themselves (the Label Studio SDK)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
