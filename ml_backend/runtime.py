"""The long-lived objects of one process, built once from settings, and the model families
composed.

The HTTP server and the RQ worker each build one :class:`Runtime`; request handlers and jobs
receive it explicitly. Each model family (see :mod:`ml_backend.models.family`) loads lazily
(first use or the warm-up thread), never from ``/health`` or ``/setup``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import torch

from ml_backend.core.errors import BackendError, LabelStudioNotConfigured, ModelUnavailable
from ml_backend.core.images import ImageLoader
from ml_backend.core.metrics import Metrics
from ml_backend.core.settings import Device, Settings
from ml_backend.core.store import ModelStore
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.models.classifier.family import ClassifierFamily
from ml_backend.models.clipseg.family import ClipSegFamily
from ml_backend.models.detector.family import DetectorFamily
from ml_backend.models.family import BatchFamily, Family, LoadState
from ml_backend.models.sam.family import SamFamily

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Family)


def resolve_device(device: Device) -> torch.device:
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ModelUnavailable("DEVICE=cuda but no CUDA device is available")
    return torch.device(device.value)


def version_index(name: str) -> int | None:
    """The ``n`` of a version named ``{arch}-v{n}-{time}`` (versions of one project count
    up), or None for other names."""
    match = re.fullmatch(r"[\w.]+-v(\d+)-\w+", name)
    return int(match.group(1)) if match else None


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # This process's counters: /metrics exports them, whoever counted (requests or jobs).
        self.metrics = Metrics()
        self.store = ModelStore(settings.model_dir)
        self.images = ImageLoader(settings)
        self.device = resolve_device(settings.device)
        self.ls_api: LabelStudioAPI | None = None
        if settings.label_studio_url and settings.label_studio_api_key:
            self.ls_api = LabelStudioAPI(settings.label_studio_url,
                                         settings.label_studio_api_key)
        state = LoadState()
        self.families: list[Family] = []
        # The model families, one line each; /health, warm-up, version names and the batch
        # paths (/predict, pre-annotation, re-ranking) go through self.families.
        self.classifier = self._register(ClassifierFamily(settings, self.device, self.store,
                                                          state))
        self.detector = self._register(DetectorFamily(settings, self.device, self.store, state,
                                                      self.untrained_version()))
        self.sam = self._register(SamFamily(settings, self.device, state))
        self.clipseg = self._register(ClipSegFamily(settings, self.device, state))

    def _register(self, family: F) -> F:
        self.families.append(family)
        return family

    def batch_families(self) -> list[BatchFamily]:
        """The families that pre-label whole batches, in registration order."""
        return [f for f in self.families if isinstance(f, BatchFamily)]

    def label_studio(self, purpose: str) -> LabelStudioAPI:
        """The Label Studio API client, or LabelStudioNotConfigured saying that ``purpose``
        (e.g. "re-ranking") needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."""
        if self.ls_api is None:
            raise LabelStudioNotConfigured(purpose)
        return self.ls_api

    def status(self) -> dict[str, dict[str, Any]]:
        """Every family's state, as /health reports it (never loads)."""
        return {family.name: family.status() for family in self.families}

    def warm_up(self) -> None:
        """Load every family's configured model (run in a background thread), so /health
        says ``ready`` soon after start for what loads."""
        for family in self.families:
            family.warm_up()

    # --- model versions -----------------------------------------------------------------
    def is_our_version(self, name: str) -> bool:
        """Whether ``name`` is a version string this backend produces (for any project)."""
        prefixes = [p for f in self.families if (p := f.version_prefix())]
        pattern = "|".join(re.escape(p) for p in prefixes)
        return re.fullmatch(rf"(?:{pattern})-v\d+-[\w]+", name) is not None

    def untrained_version(self) -> str:
        return f"{self.settings.resnet_arch}-v0-untrained"

    def model_version(self, project: int | None) -> str:
        version = self.store.latest(project) if project is not None else None
        return version.name if version is not None else self.untrained_version()

    def announce(self, project: int, version: str, retitle: bool = True) -> None:
        """Tell Label Studio the project's current version so its scores show in Data Manager
        (``retitle``: see :meth:`LabelStudioAPI.set_model_version`)."""
        if self.ls_api is None or not self.settings.update_project_model_version:
            return
        try:
            self.ls_api.set_model_version(project, version, self.is_our_version, retitle)
        except BackendError as exc:
            log.warning("could not set project %s model_version: %s", project, exc)
