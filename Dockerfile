# odeserve image: API (uvicorn) or worker (celery) depending on the command.
# TORCH_INDEX_URL picks the torch build: .../whl/cpu for the API, a CUDA index (e.g. .../whl/cu128)
# for GPU workers; docker-compose.yml sets it per service.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELS_STORE=/data/models_store

WORKDIR /app
RUN useradd --create-home --uid 1000 odeserve \
    && mkdir -p /data/models_store \
    && chown -R odeserve /data

# torch first, from the chosen index, so the layer is reused across source changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY workers ./workers
RUN pip install ".[s3]"

USER odeserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=3)"
CMD ["uvicorn", "--factory", "service.api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
