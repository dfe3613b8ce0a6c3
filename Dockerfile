# bigsleep-bot for a GPU host. Build: `docker build -t bigsleep-bot .`; run: the compose example in README.md.
#
# Base: the official Python image (Debian bookworm, slim), with a Python that pyproject.toml allows. No CUDA
# image is needed: the pinned torch from PyPI (torch==2.14.1, Linux) installs its own CUDA 13.0 runtime, cuDNN
# and cuBLAS as pip packages (nvidia-*, cuda-toolkit), so the host needs only the NVIDIA driver (580 or newer,
# as CUDA 13.0 asks) and the NVIDIA Container Toolkit, which mounts the driver into the container.
# `pip install` below installs exactly the README's install: pyproject.toml's dependencies with their pins, then
# this package. tests/test_dockerfile.py holds the image to that.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/bigsleep-bot

# A C++ compiler: worker.compile ("auto": on CUDA) builds the step's fused kernels with torch.compile at start,
# and Triton compiles its launchers with it. Without one the step runs uncompiled (slower on a GPU) and the log
# says so. The g++ metapackage's version is bookworm's, which security updates to gcc-12 leave as it is.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*

# The pinned dependencies first, in a layer of their own: a change to the code then rebuilds only the small
# layer below. They are read from pyproject.toml, so there is no second list to keep in step.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself (only what it is built from: see .dockerignore), and the settings file the bot reads.
COPY README.md ./
COPY generator ./generator
COPY bot ./bot
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && bigsleep --help > /dev/null \
    && bigsleep-bot --help > /dev/null
COPY config ./config

# A fixed, unprivileged uid: bind-mounted folders must be writable by 10001 (`chown -R 10001:10001 ./data`).
RUN groupadd --system --gid 10001 bigsleep \
    && useradd --system --uid 10001 --gid bigsleep --home-dir /data --shell /usr/sbin/nologin bigsleep \
    && mkdir -p /data /weights \
    && chown bigsleep:bigsleep /data /weights

# The job database and images (BIGSLEEP_DATA_DIR), and the model weights (BIGSLEEP_CACHE_DIR, about 1 GB,
# downloaded once: `docker compose run --rm bigsleep bigsleep download`). DISCORD_TOKEN is never baked in:
# pass it in the container's environment.
ENV BIGSLEEP_CONFIG_DIR=/opt/bigsleep-bot/config \
    BIGSLEEP_DATA_DIR=/data \
    BIGSLEEP_CACHE_DIR=/weights \
    BIGSLEEP_HEALTH__ENABLED=true \
    BIGSLEEP_HEALTH__PORT=8080
VOLUME ["/data", "/weights"]
EXPOSE 8080

# Numeric, so that runtimes which insist on a non-root user (runAsNonRoot) can tell without reading /etc/passwd.
USER 10001:10001
WORKDIR /data

# The bot's own health endpoint, from inside the container (so no curl: the image's Python does the asking).
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BIGSLEEP_HEALTH__PORT', '8080') + '/healthz', timeout=8)"]

# CMD rather than ENTRYPOINT, so `docker compose run --rm bigsleep bigsleep doctor` runs the other commands.
CMD ["bigsleep-bot"]
