"""Fixtures for integration tests against the real Label Studio (see PROTOCOL notes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:  # make tests/redis_fixture.py importable from here
    sys.path.insert(0, _TESTS_DIR)

from ml_backend.devtools.local_label_studio import LocalLabelStudio  # noqa: E402

from redis_fixture import redis_server  # noqa: E402

__all__ = ["label_studio", "ls_client", "redis_server"]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """One real Label Studio for the whole session, on a free port with a fresh data dir."""
    data_dir = tmp_path_factory.mktemp("label-studio-data")
    with LocalLabelStudio(data_dir) as ls:
        yield ls


@pytest.fixture(scope="session")
def ls_client(label_studio: LocalLabelStudio):  # -> LabelStudio
    """A ``label_studio_sdk.LabelStudio`` client logged in as the admin."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.api_key)
