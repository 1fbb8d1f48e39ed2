"""All configuration in one frozen object, read from the environment once at the edges.

The app factory and the worker entry point call :meth:`Settings.from_env`; everything else
receives the object (or the few fields it needs) explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path

from ml_backend.learning.selection import Strategy


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"


WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
# Boxes shown from this confidence: chosen for mAP. It stays the default (the effort benchmark
# measured the same annotator time with DETECTOR_MIN_SCORE=auto: docs/benchmarks.md), and is
# auto's value for a version whose training chose no threshold.
DEFAULT_DETECTOR_MIN_SCORE = 0.25


def _parse_enum(enum_type: type[Enum], name: str, raw: str) -> Enum:
    try:
        return enum_type(raw.strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)  # type: ignore[attr-defined]
        raise ValueError(f"{name}={raw!r} is not one of: {allowed}") from None


def _opt_str(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _opt_path(env: Mapping[str, str], name: str) -> Path | None:
    value = _opt_str(env, name)
    return Path(value).expanduser() if value else None


def absolute_path(path: Path | str) -> Path:
    """``path`` made absolute against the current directory, now. Settings hold only such
    paths: a child process (the detector fine-tune runs with ``cwd`` = its work folder) or a
    later ``chdir`` must not change what a relative setting means."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _model_spec(spec: str | None) -> str | None:
    """A hub id or a local folder (CLIPSEG_MODEL): made absolute when it names a path (it
    exists here, or is spelt as one), left alone when it is a hub id."""
    if not spec:
        return spec
    if spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return str(absolute_path(spec))
    return spec


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _auto_int(env: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    """An integer >= ``minimum``, or None for ``auto`` (the default)."""
    raw = env.get(name, "").strip().lower()
    if raw in {"", "auto"}:
        return None
    return _int(env, name, 0, minimum=minimum)


def _image_size(env: Mapping[str, str], name: str) -> int | None:
    """A side in pixels, or None for ``auto`` (the default)."""
    return _auto_int(env, name, minimum=16)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value > 1.0:
        raise ValueError(f"{name}={value} must be a share between 0 and 1")
    return value


def _auto_share(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A share between 0 and 1, or None for ``auto``; unset is ``default``."""
    raw = env.get(name, "").strip().lower()
    if raw == "auto":
        return None
    if not raw:
        return default
    try:
        return _share(env, name, 0.0)
    except ValueError as exc:
        raise ValueError(f"{exc} (or auto)") from None


def _load(env: Mapping[str, str], name: str, default: float) -> float:
    value = _share(env, name, default)
    if value <= 0.0:
        raise ValueError(f"{name}={value} must be above 0")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class Settings:
    """Every knob of the backend. Field docs name the environment variable that sets it."""

    # Label Studio access (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY): legacy token or PAT.
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    # Optional HTTP basic auth on every route (BASIC_AUTH_USER, BASIC_AUTH_PASS).
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    # With WEBHOOK_SECRET, /webhook needs it in the X-Webhook-Secret header (the setup
    # script registers such a webhook; Label Studio's auto-created one carries none).
    webhook_secret: str | None = None
    # Storage (MODEL_DIR, CACHE_DIR).
    model_dir: Path = Path("var/models")
    cache_dir: Path = Path("var/cache")
    # Background jobs: RQ when set (REDIS_URL), else the in-process worker.
    redis_url: str | None = None
    # Torch device (DEVICE) and intra-op threads (TORCH_THREADS, 0 = torch default).
    device: Device = Device.CPU
    torch_threads: int = 0
    # Direct reads for /data/local-files/?d=… (LOCAL_FILES_DOCUMENT_ROOT) and for
    # /data/upload/… (UPLOAD_DIR: Label Studio's <data dir>/media/upload) when the backend
    # shares Label Studio's disk; files missing there are fetched over HTTP.
    local_files_document_root: Path | None = None
    upload_dir: Path | None = None
    # Classifier (RESNET_ARCH, RESNET_CHECKPOINT, CLASSIFIER_IMAGE_SIZE).
    resnet_arch: str = "resnet18"
    resnet_checkpoint: Path | None = None
    # None ("auto"): each image at its own size, its longer side rounded up to a multiple
    # of 32 within [32, 224] (models/classifier/model.py: native_side).
    classifier_image_size: int | None = None
    # Start a backbone fine-tune on START_TRAINING once this many labels exist
    # (FINETUNE_MIN_LABELS), for FINETUNE_EPOCHS epochs over at most FINETUNE_MAX_IMAGES.
    finetune_min_labels: int = 50
    finetune_epochs: int = 3
    finetune_max_images: int = 2000
    # Other model families (used by their adapters; SAM_MODEL_TYPE, SAM_CHECKPOINT,
    # YOLO_CHECKPOINT, CLIPSEG_MODEL).
    sam_model_type: str = "vit_b"
    sam_checkpoint: Path | None = None
    yolo_checkpoint: Path | None = None
    clipseg_model: str | None = None
    # Detector (YOLO_CHECKPOINT above; without it YOLO_ARCH, an Ultralytics architecture
    # config, is trained from scratch by the first fine-tune). Boxes below
    # DETECTOR_MIN_SCORE are not shown (a control's model_score_threshold attribute
    # overrides it); None (``auto``) is the threshold the version's training chose for the
    # least annotator fix-up time (detector.thresholds), else DEFAULT_DETECTOR_MIN_SCORE.
    # DETECTOR_IMAGE_SIZE is the inference and training size.
    yolo_arch: str = "yolov8n.yaml"
    detector_min_score: float | None = DEFAULT_DETECTOR_MIN_SCORE
    detector_image_size: int = 640
    # Fine-tuning: on START_TRAINING and after every DETECTOR_TRAIN_EVERY new annotated
    # tasks, once DETECTOR_MIN_LABELS exist; DETECTOR_EPOCHS epochs of DETECTOR_BATCH images,
    # in a child process killed after DETECTOR_TRAIN_TIMEOUT_S. So that serving keeps its
    # latency, the child runs at CPU niceness DETECTOR_TRAIN_NICE and, where Linux offers it
    # (DETECTOR_TRAIN_IDLE), in the SCHED_IDLE class, which yields a core to a request at
    # once (bench_detection_latency: 1.63x idle latency during a fine-tune, 3.15x with
    # niceness alone).
    detector_train_every: int = 10
    detector_min_labels: int = 8
    detector_epochs: int = 10
    detector_batch: int = 16
    # A round on fewer training images repeats them up to DETECTOR_MIN_EPOCH_IMAGES per epoch:
    # a from-scratch detector otherwise takes one optimizer step per epoch on its first
    # rounds and shows no box for the first ~60 tasks (bench_effort, shapes). None (``auto``)
    # is 160 on a GPU and, on a CPU, as many as cost what 160 images cost at 256 px (26 at
    # 640 px: 160 there took 189 s per epoch on 2 cores); see detector.training.
    detector_min_epoch_images: int | None = None
    detector_train_nice: int = 10
    detector_train_idle: bool = True
    detector_train_timeout_s: float = 4 * 3600.0
    # SAM (SAM_MODEL_TYPE, SAM_CHECKPOINT above). Image embeddings stay in memory up to
    # SAM_EMBEDDING_MEMORY_MB and on disk up to SAM_EMBEDDING_DISK_MB (4 MB each). They are
    # computed ahead of clicks for imported tasks (at most SAM_PRECOMPUTE_MAX_TASKS per
    # import), for tasks being opened, and for the SAM_PRECOMPUTE_AHEAD tasks at the head of
    # the ranked queue. Polygons follow the mask within SAM_POLYGON_TOLERANCE_PX pixels.
    sam_embedding_memory_mb: int = 512
    sam_embedding_disk_mb: int = 4096
    sam_precompute_max_tasks: int = 1000
    sam_precompute_ahead: int = 20
    sam_polygon_tolerance_px: float = 1.5
    # CLIPSeg (CLIPSEG_MODEL above): a pixel is a label's when its probability exceeds
    # CLIPSEG_THRESHOLD (a control's clipseg_threshold attribute or a threshold Number
    # control overrides it); components smaller than CLIPSEG_MIN_AREA (share of the image)
    # are dropped. With CLIPSEG_BACKGROUND_PROMPT the labels compete with it per pixel
    # (softmax); empty: an independent sigmoid per label. CLIPSEG_SAM_REFINE: when SAM is
    # configured too, each CLIPSeg box is handed to SAM for the mask. Vision activations
    # stay in memory up to CLIPSEG_CACHE_MB (4.5 MB per image for the released model).
    clipseg_threshold: float = 0.4
    clipseg_min_area: float = 0.001
    clipseg_background_prompt: str = "background"
    clipseg_sam_refine: bool = False
    clipseg_cache_mb: int = 256
    # Whole-project pre-annotation: tasks are predicted in chunks of PREANNOTATE_CHUNK_SIZE,
    # each a job that may run PREANNOTATE_CHUNK_TIMEOUT_S and is retried up to
    # PREANNOTATE_RETRIES times (also when its worker dies: a live RQ worker notices within
    # WORKER_MAINTENANCE_S after the chunk's timeout + 60 s).
    preannotate_chunk_size: int = 50
    preannotate_chunk_timeout_s: int = 600
    preannotate_retries: int = 3
    worker_maintenance_s: int = 60
    # Limits (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_TASKS_PER_REQUEST, MAX_REQUEST_BYTES).
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_tasks_per_request: int = 1000
    max_request_bytes: int = 64 * 1024 * 1024
    # Image URLs outside Label Studio's origin must resolve to public addresses, except
    # hosts, host:port pairs and networks listed in IMAGE_URL_ALLOWLIST (comma-separated).
    image_url_allowlist: tuple[str, ...] = ()
    # A /predict stops starting new images after REQUEST_TIME_BUDGET_S (Label Studio gives up
    # after 100 s): the remaining tasks get empty predictions instead of the whole batch
    # timing out.
    request_time_budget_s: float = 90.0
    # Image fetching (FETCH_TIMEOUT_S) and the on-disk image cache (IMAGE_CACHE_BYTES).
    fetch_timeout_s: float = 20.0
    image_cache_bytes: int = 512 * 1024 * 1024
    # Training data is re-read from Label Studio at most this often for annotation-triggered
    # updates (FULL_SYNC_INTERVAL_S); START_TRAINING and deletions always re-read it.
    full_sync_interval_s: float = 30.0
    # Write new predictions' version into the project so Data Manager scores show
    # (UPDATE_PROJECT_MODEL_VERSION).
    update_project_model_version: bool = True
    # Which task to label next (RANKING_STRATEGY: margin, least_confidence, entropy,
    # ranked_batch, random; margin needed the fewest labels in the learning benchmark), how
    # many of them form the top of the queue (RANKING_BATCH_SIZE) and which share of that
    # batch is drawn at random (RANKING_RANDOM_SHARE, a hedge against a biased model).
    ranking_strategy: Strategy = Strategy.MARGIN
    ranking_batch_size: int = 10
    ranking_random_share: float = 0.1
    # After each new version, re-score every unlabeled task and write the predictions to
    # Label Studio in bulk (RERANK_AFTER_TRAINING; needs LABEL_STUDIO_URL and an API key).
    rerank_after_training: bool = True
    # At least this long between two re-ranks of a project (RERANK_MIN_INTERVAL_S), and long
    # enough that re-ranking keeps Label Studio busy at most this share of the time
    # (RERANK_MAX_LOAD; 0.5: idle at least as long as the last re-rank took; 1: no limit).
    # Versions saved meanwhile are ranked together.
    rerank_min_interval_s: float = 5.0
    rerank_max_load: float = 0.5
    log_level: str = "INFO"
    # LOG_FORMAT: text, or json (one object per line, for log collectors).
    log_format: str = "text"

    def __post_init__(self) -> None:
        # Every path absolute once, here (see absolute_path). object.__setattr__: frozen.
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, absolute_path(value))
        object.__setattr__(self, "clipseg_model", _model_spec(self.clipseg_model))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); raise ValueError on bad values."""
        env = os.environ if env is None else env
        defaults = cls()
        url = _opt_str(env, "LABEL_STUDIO_URL")
        return cls(
            label_studio_url=url.rstrip("/") if url else None,
            label_studio_api_key=_opt_str(env, "LABEL_STUDIO_API_KEY"),
            basic_auth_user=_opt_str(env, "BASIC_AUTH_USER"),
            basic_auth_pass=_opt_str(env, "BASIC_AUTH_PASS"),
            webhook_secret=_opt_str(env, "WEBHOOK_SECRET"),
            model_dir=_opt_path(env, "MODEL_DIR") or defaults.model_dir,
            cache_dir=_opt_path(env, "CACHE_DIR") or defaults.cache_dir,
            redis_url=_opt_str(env, "REDIS_URL"),
            device=_parse_enum(Device, "DEVICE", env.get("DEVICE", "cpu")),  # type: ignore[arg-type]
            torch_threads=_int(env, "TORCH_THREADS", 0),
            local_files_document_root=_opt_path(env, "LOCAL_FILES_DOCUMENT_ROOT")
            or _opt_path(env, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),
            upload_dir=_opt_path(env, "UPLOAD_DIR"),
            resnet_arch=_opt_str(env, "RESNET_ARCH") or defaults.resnet_arch,
            resnet_checkpoint=_opt_path(env, "RESNET_CHECKPOINT"),
            classifier_image_size=_image_size(env, "CLASSIFIER_IMAGE_SIZE"),
            finetune_min_labels=_int(env, "FINETUNE_MIN_LABELS", defaults.finetune_min_labels),
            finetune_epochs=_int(env, "FINETUNE_EPOCHS", defaults.finetune_epochs),
            finetune_max_images=_int(env, "FINETUNE_MAX_IMAGES", defaults.finetune_max_images, 1),
            sam_model_type=_opt_str(env, "SAM_MODEL_TYPE") or defaults.sam_model_type,
            sam_checkpoint=_opt_path(env, "SAM_CHECKPOINT"),
            yolo_checkpoint=_opt_path(env, "YOLO_CHECKPOINT"),
            preannotate_chunk_size=_int(env, "PREANNOTATE_CHUNK_SIZE",
                                        defaults.preannotate_chunk_size, minimum=1),
            preannotate_chunk_timeout_s=_int(env, "PREANNOTATE_CHUNK_TIMEOUT_S",
                                             defaults.preannotate_chunk_timeout_s, minimum=1),
            preannotate_retries=_int(env, "PREANNOTATE_RETRIES", defaults.preannotate_retries),
            worker_maintenance_s=_int(env, "WORKER_MAINTENANCE_S",
                                      defaults.worker_maintenance_s, minimum=1),
            request_time_budget_s=_float(env, "REQUEST_TIME_BUDGET_S",
                                         defaults.request_time_budget_s),
            image_url_allowlist=tuple(e.strip() for e in env.get("IMAGE_URL_ALLOWLIST", "")
                                      .split(",") if e.strip()),
            clipseg_model=_opt_str(env, "CLIPSEG_MODEL"),
            clipseg_threshold=_share(env, "CLIPSEG_THRESHOLD", defaults.clipseg_threshold),
            clipseg_min_area=_share(env, "CLIPSEG_MIN_AREA", defaults.clipseg_min_area),
            clipseg_background_prompt=env.get("CLIPSEG_BACKGROUND_PROMPT",
                                              defaults.clipseg_background_prompt).strip(),
            clipseg_sam_refine=_bool(env, "CLIPSEG_SAM_REFINE", defaults.clipseg_sam_refine),
            clipseg_cache_mb=_int(env, "CLIPSEG_CACHE_MB", defaults.clipseg_cache_mb),
            yolo_arch=_opt_str(env, "YOLO_ARCH") or defaults.yolo_arch,
            detector_min_score=_auto_share(env, "DETECTOR_MIN_SCORE",
                                           defaults.detector_min_score),
            detector_image_size=_int(env, "DETECTOR_IMAGE_SIZE", defaults.detector_image_size,
                                     minimum=32),
            detector_train_every=_int(env, "DETECTOR_TRAIN_EVERY",
                                      defaults.detector_train_every, 1),
            detector_min_labels=_int(env, "DETECTOR_MIN_LABELS", defaults.detector_min_labels,
                                     1),
            detector_epochs=_int(env, "DETECTOR_EPOCHS", defaults.detector_epochs, 1),
            detector_batch=_int(env, "DETECTOR_BATCH", defaults.detector_batch, 1),
            detector_min_epoch_images=_auto_int(env, "DETECTOR_MIN_EPOCH_IMAGES"),
            detector_train_nice=_int(env, "DETECTOR_TRAIN_NICE", defaults.detector_train_nice),
            detector_train_idle=_bool(env, "DETECTOR_TRAIN_IDLE", defaults.detector_train_idle),
            detector_train_timeout_s=_float(env, "DETECTOR_TRAIN_TIMEOUT_S",
                                            defaults.detector_train_timeout_s, 1.0),
            sam_embedding_memory_mb=_int(env, "SAM_EMBEDDING_MEMORY_MB",
                                         defaults.sam_embedding_memory_mb),
            sam_embedding_disk_mb=_int(env, "SAM_EMBEDDING_DISK_MB",
                                       defaults.sam_embedding_disk_mb),
            sam_precompute_max_tasks=_int(env, "SAM_PRECOMPUTE_MAX_TASKS",
                                          defaults.sam_precompute_max_tasks),
            sam_precompute_ahead=_int(env, "SAM_PRECOMPUTE_AHEAD", defaults.sam_precompute_ahead),
            sam_polygon_tolerance_px=_float(env, "SAM_POLYGON_TOLERANCE_PX",
                                            defaults.sam_polygon_tolerance_px),
            max_image_bytes=_int(env, "MAX_IMAGE_BYTES", defaults.max_image_bytes, 1),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", defaults.max_image_pixels, 1),
            max_tasks_per_request=_int(env, "MAX_TASKS_PER_REQUEST", 1000, 1),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", defaults.max_request_bytes, 1),
            fetch_timeout_s=_float(env, "FETCH_TIMEOUT_S", defaults.fetch_timeout_s),
            image_cache_bytes=_int(env, "IMAGE_CACHE_BYTES", defaults.image_cache_bytes),
            full_sync_interval_s=_float(env, "FULL_SYNC_INTERVAL_S", 30.0),
            update_project_model_version=_bool(env, "UPDATE_PROJECT_MODEL_VERSION", True),
            ranking_strategy=_parse_enum(  # type: ignore[arg-type]
                Strategy, "RANKING_STRATEGY", env.get("RANKING_STRATEGY", "margin")),
            ranking_batch_size=_int(env, "RANKING_BATCH_SIZE", defaults.ranking_batch_size, 1),
            ranking_random_share=_share(env, "RANKING_RANDOM_SHARE",
                                        defaults.ranking_random_share),
            rerank_after_training=_bool(env, "RERANK_AFTER_TRAINING", True),
            rerank_min_interval_s=_float(env, "RERANK_MIN_INTERVAL_S",
                                         defaults.rerank_min_interval_s),
            rerank_max_load=_load(env, "RERANK_MAX_LOAD", defaults.rerank_max_load),
            log_level=(_opt_str(env, "LOG_LEVEL") or "INFO").upper(),
            log_format=_choice(env, "LOG_FORMAT", ("text", "json"), defaults.log_format),
        )

    def paths(self) -> dict[str, str]:
        """The storage folders this process uses (absolute), for /health and start-up logs:
        a worker started elsewhere with relative settings would show other ones."""
        return {"model_dir": str(self.model_dir), "cache_dir": str(self.cache_dir)}

    def public_dict(self) -> dict[str, object]:
        """Settings safe to show (/health): secrets replaced by whether they are set."""
        secret = {"label_studio_api_key", "basic_auth_pass"}
        out: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in secret:
                out[field.name] = "<set>" if value else None
            elif isinstance(value, Path):
                out[field.name] = str(value)
            elif isinstance(value, Enum):
                out[field.name] = value.value
            else:
                out[field.name] = value
        return out


# Settings that name files or folders (see Settings.__post_init__).
_PATH_FIELDS = ("model_dir", "cache_dir", "local_files_document_root", "upload_dir",
                "resnet_checkpoint", "sam_checkpoint", "yolo_checkpoint")
