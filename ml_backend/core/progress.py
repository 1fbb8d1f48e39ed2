"""A one-line text progress bar for the long-running commands."""

from __future__ import annotations

from typing import TextIO


def progress_bar(out: TextIO, done: int, total: int, elapsed: float, unit: str = "task"
                 ) -> None:
    """Redraw ``[####....] done/total`` with the rate so far and the time left."""
    width = 30
    filled = int(width * min(done, total) / max(total, 1))
    rate = elapsed / max(done, 1)
    eta = rate * max(total - done, 0)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
              f"{rate:.1f} s/{unit}, {eta:.0f} s left")
    out.flush()
