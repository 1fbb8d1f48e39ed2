"""Error categories. The HTTP layer maps each to a status code; nothing else catches broadly."""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error this package raises on purpose."""

    http_status: int = 500


class BadRequest(BackendError, ValueError):
    """The request body or its fields are malformed."""

    http_status = 400


class NotFound(BackendError):
    """Nothing of that name exists (yet), e.g. the ranking of a project never ranked."""

    http_status = 404


class UnsupportedConfig(BadRequest):
    """The label config has nothing this backend can serve."""

    http_status = 422


class ImageError(BackendError):
    """A task's image could not be fetched or decoded. Reported per task, never per batch."""

    http_status = 422


class ImageTooLarge(ImageError):
    """The image exceeds the configured byte or pixel limit."""


class ImageNotAllowed(ImageError):
    """The image URL points somewhere the backend refuses to fetch from."""


class ModelUnavailable(BackendError):
    """A model (or its checkpoint) cannot be loaded; only that model's controls are affected."""

    http_status = 503


class LabelStudioNotConfigured(BadRequest):
    """Work that reads or writes Label Studio asked of a backend without its URL and key."""

    def __init__(self, purpose: str) -> None:
        super().__init__(f"{purpose} needs Label Studio's API: set LABEL_STUDIO_URL and "
                         "LABEL_STUDIO_API_KEY")


class LabelStudioUnavailable(BackendError):
    """Label Studio's API cannot be reached or refused our credentials."""

    http_status = 502
