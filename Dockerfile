# syntax=docker/dockerfile:1
# Shape Detector images (BuildKit; Docker >= 23 uses it by default).
#   docker build -t shape-detector:0.1.0 .                          the service (last stage: runtime)
#   docker build --target train -t shape-detector-train:0.1.0 .     the training image
# tests/deploy reads this file: it lints it, replays the builder's RUN into a fresh virtualenv
# and starts the runtime stage's CMD with its ENV.

# An exact patch release, so a rebuild gets the same Python; bump it on purpose.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- builder: the serving runtime (the `serve` extra, no torch) in a virtualenv ---------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
WORKDIR /src
# The dependencies first, each pinned in requirements-serve.txt (`make lock-serve`): a rebuild
# gets the same packages, and this layer is rebuilt only when that file changes, not at every
# change of the code or the README. Every one ships manylinux wheels for CPython 3.11, so no
# compiler is needed.
# --without-pip: the base image's pip installs into the venv, and the venv ships no installer.
# The cache mount keeps pip's downloads out of the layer and reuses them across builds.
COPY requirements-serve.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && pip --python "$VIRTUAL_ENV/bin/python" install --no-deps -r requirements-serve.txt
# Then the project: its own wheel (with app/static), non-editable, into the venv, the only
# thing the runtime stage takes. --no-deps: nothing unpinned; `pip check` fails the build if
# a pinned package or the project lacks a requirement (pip check does not read extras:
# tests/deploy checks the pins against the `serve` extra of pyproject.toml).
COPY pyproject.toml README.md ./
COPY app/ app/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip --python "$VIRTUAL_ENV/bin/python" install --no-deps . \
    && pip --python "$VIRTUAL_ENV/bin/python" check

# ---- train: `docker compose --profile train run --rm train` -----------------------------
# Trains and exports models/<name>/ into /models, which is meant to be a mounted directory.
FROM ${PYTHON_IMAGE} AS train
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
WORKDIR /src
# torch comes alone from PyTorch's CPU index: PyPI's Linux wheel of torch is the CUDA build,
# which pulls gigabytes of nvidia-* wheels. constraints.txt pins it in both steps (its
# `torch==2.13.0` matches the index's `2.13.0+cpu`), so the second step, which reads PyPI
# only, finds torch already satisfied and never replaces it. Its layer comes before the
# sources are copied: a change of the code or README does not install torch again.
COPY constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VIRTUAL_ENV" \
    && pip install --index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch
COPY pyproject.toml README.md ./
COPY app/ app/
COPY training/ training/
# `serve` too: training writes model cards with app.core (pydantic), which the `train`
# extra alone does not install.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt ".[serve,train]"
# Not root. With a bind-mounted /models, run it as the owner of the host directory instead
# (compose's train service does: SHAPE_DETECTOR_UID / SHAPE_DETECTOR_GID).
USER 10001:10001
ENTRYPOINT ["python", "-m", "training.train", "--out", "/models"]
CMD ["--name", "bump"]

# ---- runtime: the service, the default target ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# A named user, so tools that look up the uid find it; no home, no login shell.
RUN groupadd --system --gid 10001 shape-detector \
    && useradd --system --uid 10001 --gid shape-detector --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin shape-detector
COPY --from=builder /opt/venv /opt/venv
# The shipped models, root-owned and so read-only for the service; a bind mount or volume
# on /models replaces them (see docker-compose.yml).
COPY models/ /models/
# The root filesystem may be read-only: PYTHONDONTWRITEBYTECODE (pip compiled the venv
# already), and HOME in /tmp, the one writable path (tmpfs in compose, emptyDir in k8s):
# onnxruntime keeps a telemetry device id under $HOME/.cache (where it cannot, it logs a
# warning and keeps it in memory).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHAPE_DETECTOR_HOST=0.0.0.0 \
    SHAPE_DETECTOR_PORT=8000 \
    SHAPE_DETECTOR_WORKERS=1 \
    SHAPE_DETECTOR_MODEL_DIR=/models
# Any directory works: the app is installed in the venv, not imported from the cwd.
WORKDIR /srv
USER 10001:10001
EXPOSE 8000
# Ready, not just alive: /readyz answers 200 once every model is loaded and warm. The image
# has no curl. http.client, not urllib: urllib would send the probe through an HTTP_PROXY set
# in the container's environment. A refused connection raises, any status but 200 exits 1.
# It asks where the service listens, as the service reads its settings (127.0.0.1 and 8000
# when SHAPE_DETECTOR_HOST and SHAPE_DETECTOR_PORT are unset): the configured address when it
# is one (a pod's IP), 127.0.0.1 for every IPv4 address (0.0.0.0, or an empty host: all
# interfaces), ::1 for every IPv6 address (::, where one worker listens on IPv6 only).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import http.client, os; h = os.environ.get('SHAPE_DETECTOR_HOST', '127.0.0.1'); c = http.client.HTTPConnection({'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h), int(os.environ.get('SHAPE_DETECTOR_PORT') or 8000), timeout=2); c.request('GET', '/readyz'); raise SystemExit(c.getresponse().status != 200)"]
# python -m app reads every SHAPE_DETECTOR_* variable, SHAPE_DETECTOR_WORKERS included, and
# runs uvicorn; exec form, so SIGTERM reaches it and it stops gracefully with exit code 0.
CMD ["python", "-m", "app"]
