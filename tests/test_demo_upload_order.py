"""The demo uploads its images in a seeded shuffled order (issue 21): the upload order is the
task-id order, which Label Studio lists until scores exist, and the rendered digits come one
class after another."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ml_backend.devtools.datasets import write_digit_pngs

from conftest import load_script

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _demo() -> ModuleType:
    return load_script(DEMO)


def test_the_demo_shuffles_its_upload_order_with_a_seed(tmp_path: Path) -> None:
    demo = _demo()
    written = write_digit_pngs(tmp_path / "digits", 60, size=8, seed=0)
    label = {path: digit for path, digit in written}
    paths = [path for path, _ in written]
    upload = demo.shuffled(paths)
    assert sorted(upload) == sorted(paths), "every image once"
    assert upload == demo.shuffled(paths), "the same order on every run"
    assert upload != paths and demo.shuffled(paths, seed=1) != upload
    # Neither one class at a time nor round robin over the classes.
    digits = [label[path] for path in upload]
    assert digits != sorted(digits) and digits[:10] != list(range(10))
