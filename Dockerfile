# pixelmill: one image for every process (web, workers, reaper, flower); docker-compose.yml picks the command.
#
#   docker build -t pixelmill .                                  CPU-only torch (small; classic styles, tiny models)
#   docker build -t pixelmill:gpu --build-arg TORCH_INDEX_URL= .  torch from PyPI: the CUDA build, for gpu workers
#
# A GPU container also needs the NVIDIA driver and the NVIDIA Container Toolkit on the host (README, "GPU").
FROM python:3.11-slim

# Keep in step with the torch pin in pyproject.toml (tests/unit/test_deploy.py checks it).
ARG TORCH_VERSION=2.13.0
# PyTorch's own index of CPU-only wheels; set it empty to take PyPI's wheel (the CUDA build on Linux x86_64),
# or to another of PyTorch's indexes for a given CUDA version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIXELMILL_DATA_DIR=/data \
    PIXELMILL_HOST=0.0.0.0

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first (the big layer, cached while the code changes); `pip install .` then finds it satisfied.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi

COPY pyproject.toml README.md ./
COPY web web
COPY tasks tasks
COPY workers workers
COPY stack stack
COPY client client
COPY cache cache
COPY safety safety
RUN pip install .

# Run as an unprivileged user; the volumes mounted at /data and /models start out owned by it.
RUN useradd --create-home --uid 10001 pixelmill \
 && mkdir -p /data /models \
 && chown pixelmill:pixelmill /data /models
USER pixelmill

EXPOSE 8000 5555
CMD ["pixelmill", "web", "--host", "0.0.0.0", "--port", "8000"]
