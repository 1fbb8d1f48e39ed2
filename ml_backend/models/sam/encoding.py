"""A task image's SAM embedding, for a click and for the precompute jobs alike: read once
from the store (memory or shared disk) or computed once, however many threads and
processes ask at the same time."""

from __future__ import annotations

from ml_backend.core.images import decode_image
from ml_backend.models.sam.embeddings import Lookup
from ml_backend.runtime import Runtime


def embed_image(runtime: Runtime, url: str, task_id: int | None) -> Lookup:
    """The SAM embedding of the image at ``url`` (task ``task_id``), and where it came from."""
    segmenter = runtime.sam.segmenter()
    data, sha = runtime.images.load_bytes(url, task_id=task_id)
    return runtime.sam.embeddings.get_or_compute(
        segmenter.model_id, sha, lambda: segmenter.embed(
            decode_image(data, runtime.settings.max_image_pixels, url)))
