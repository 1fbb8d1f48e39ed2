# ML backend image: `ml-backend serve` (gunicorn) by default, `ml-backend worker` for RQ.
# torch comes from PyPI as pinned in pyproject.toml (the Linux wheels carry CUDA, so the same
# image runs on CPU or, with the compose "gpu" profile, on an NVIDIA GPU).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_DIR=/data/models \
    CACHE_DIR=/data/cache

WORKDIR /app
# OpenCV (opencv-python, also what ultralytics uses) needs these shared libraries at import time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY ml_backend ./ml_backend
# sam2 (the [sam2] extra, for SAM 2.1) builds from source against the torch installed first.
RUN pip install . \
 && pip install "setuptools>=68" wheel \
 && SAM2_BUILD_CUDA=0 pip install --no-build-isolation ".[sam2]" \
 && useradd --create-home --uid 1000 app \
 && mkdir -p /data/models /data/cache \
 && chown -R app:app /data

USER app
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2).status != 200)"
CMD ["ml-backend", "serve", "--host", "0.0.0.0", "--port", "9090"]
