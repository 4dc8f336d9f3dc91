# corticalrnn container image.
#
# GPU image (default; PyTorch + CUDA + cuDNN from the pinned official runtime image):
#   docker build -t corticalrnn:0.1.0 .
# CPU image (for testing; installs the CPU torch wheel on a plain Python base):
#   docker build -t corticalrnn:0.1.0-cpu --build-arg BASE=python:3.11-slim .
# Run:
#   docker run --rm --gpus all -v "$PWD:/data" -w /data corticalrnn:0.1.0 train --help
#   apptainer build corticalrnn.sif docker-daemon://corticalrnn:0.1.0
#   apptainer exec --nv corticalrnn.sif corticalrnn train ...
# See docs/cluster.md for the whole walk-through (Apptainer, Slurm).

# Pinned by version: PyTorch 2.9.0, CUDA 12.8, cuDNN 9 (Ubuntu 22.04, conda Python 3.11); needs an
# NVIDIA driver >= 570 (CUDA 12.8). 2.9.0 is the lower end of pyproject's torch range, CI tests the upper.
ARG BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

# Used only when BASE has no torch (the CPU variant): which torch to install, and from where.
ARG TORCH_VERSION=2.9.0
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib

# C and C++ compilers: torch.compile builds code at run time (Triton's C launchers on GPU,
# Inductor's C++ kernels on CPU); the runtime base images have none. Versions follow the pinned base.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# torch: keep the base image's build (never let pip replace it); install it on a plain Python base.
# Then check that Python.h is there (Inductor/Triton compile against it; both bases ship it).
# hadolint ignore=SC2086,DL3013
RUN if ! python -c "import torch" 2>/dev/null; then \
        python -m pip install "torch==${TORCH_VERSION}" ${TORCH_PIP_ARGS}; \
    fi \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/torch-constraint.txt \
    && cat /etc/torch-constraint.txt \
    && python -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); \
assert os.path.isfile(h), f'{h} missing: torch.compile needs the Python headers; pick a BASE that has them'"

WORKDIR /opt/corticalrnn

# Dependencies first (a layer that survives source edits), from pyproject.toml's [project] table:
# the base (torch-free) dependencies and the `train` and `neo` extras (torch stays the base image's,
# which lies inside the `train` extra's torch range: tests/test_packaging.py).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extras['train'] + extras['neo']))" \
        > /tmp/requirements.txt \
    && python -m pip install --constraint /etc/torch-constraint.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself, installed (not mounted) so the image is self-contained; corticalrnn/configs/
# (the example config, package data) comes with it: `corticalrnn train --print-config`.
COPY README.md LICENSE ./
COPY corticalrnn/ corticalrnn/
COPY extract/ extract/
RUN python -m pip install --no-deps --constraint /etc/torch-constraint.txt . \
    && rm -rf build ./*.egg-info \
    && python -c "import corticalrnn, extract, torch; print('corticalrnn', corticalrnn.__version__, 'torch', torch.__version__)" \
    && corticalrnn --version \
    && corticalrnn train --print-config > /dev/null

# Unprivileged user (Apptainer runs as the calling user anyway).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash crnn
USER 1000:1000
WORKDIR /home/crnn

ENTRYPOINT ["corticalrnn"]
CMD ["--help"]
