"""Comparing a checkpoint's tensors with the architecture they are loaded into.

Every loader here is strict: a key the architecture expects but the file lacks would keep its
random initial value, and a key the file has but the architecture lacks would be dropped.
Either way the model served would not be the one in the file, so the loaders refuse it and
say which keys differ (a few of each, with counts) via :func:`describe_mismatch`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

SHOWN_KEYS = 5  # per kind: enough to recognise a renaming or a wrong architecture


def _some(keys: Iterable[str]) -> str:
    ordered = sorted(keys)
    shown = ", ".join(ordered[:SHOWN_KEYS])
    more = len(ordered) - SHOWN_KEYS
    return f"{shown}, … {more} more" if more > 0 else shown


def describe_mismatch(missing: Collection[str], unexpected: Collection[str],
                      reshaped: Mapping[str, tuple[Any, Any]] | None = None) -> str | None:
    """One line naming what differs, or None when nothing does. ``reshaped`` maps a key to
    its ``(checkpoint shape, model shape)``."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the architecture ({_some(unexpected)})")
    if reshaped:
        shown = sorted(reshaped)[:SHOWN_KEYS]
        more = len(reshaped) - len(shown)
        listed = ", ".join(f"{k} {tuple(reshaped[k][0])} vs {tuple(reshaped[k][1])}"
                           for k in shown)
        parts.append(f"{len(reshaped)} of another shape ({listed}"
                     f"{f', … {more} more' if more > 0 else ''})")
    return "; ".join(parts) or None


def reshaped_keys(loaded: Mapping[str, Any], expected: Mapping[str, Any]
                  ) -> dict[str, tuple[Any, Any]]:
    """The keys of both whose tensors differ in shape: ``{key: (loaded, expected)}``."""
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in loaded.items() if k in expected}
    return {k: (shape, tuple(expected[k].shape)) for k, shape in shapes.items()
            if shape != tuple(expected[k].shape)}


def compare_state_dicts(loaded: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """:func:`describe_mismatch` of two state dicts (tensors, compared by key and shape)."""
    return describe_mismatch(expected.keys() - loaded.keys(), loaded.keys() - expected.keys(),
                             reshaped_keys(loaded, expected))
