"""Data Manager tabs made through the API look like tabs made in the UI (pure functions over
Label Studio's JSON)."""

from __future__ import annotations

from typing import Any


def default_hidden_columns(columns: Any, view: dict[str, Any]) -> dict[str, list[str]]:
    """The ``hiddenColumns`` of a tab made in the Data Manager UI, for a tab made through the
    API with ``view`` (its filters, ordering): such a tab would show every column, pushing
    the score's column past the right edge of the screen.

    ``columns`` is the body of ``GET /api/dm/columns?project=<id>``: top-level columns whose
    ``visibility_defaults.explore`` is false are hidden, except those the tab sorts, filters
    or types on. Both keys are set, as the UI needs them (a tab with ``explore`` only fails
    with "Runtime error 'labeling'"). ValueError when the body is not a column list."""
    items = columns.get("columns") if isinstance(columns, dict) else None
    if not isinstance(items, list):
        raise ValueError("Label Studio's Data Manager columns are not a list")
    own = {str(name).removeprefix("-") for name in view.get("ordering") or []}
    own |= set(view.get("columnsDisplayType") or {})
    own |= {str(item.get("filter", "")).removeprefix("filter:")
            for item in (view.get("filters") or {}).get("items") or []
            if isinstance(item, dict)}
    hidden = []
    for column in items:
        if not isinstance(column, dict) or column.get("parent") or "id" not in column:
            continue
        name = f"{column.get('target', 'tasks')}:{column['id']}"
        if not (column.get("visibility_defaults") or {}).get("explore", True) \
                and name not in own:
            hidden.append(name)
    return {"explore": hidden, "labeling": list(hidden)}
