#!/usr/bin/env bash
# Install torch==VERSION into the Python PY (a virtualenv's), choosing the build honestly:
#
#   INDEX=auto     machine without an NVIDIA GPU (no working `nvidia-smi -L`): the CPU build from
#                  PyTorch's CPU index; with a GPU: the default index (PyPI's Linux wheel is a CUDA build)
#   INDEX=cpu      the CPU build from PyTorch's CPU index, wherever this runs
#   INDEX=default  whatever the default index (and pip's configuration) offers
#   INDEX=URL      that index, e.g. https://download.pytorch.org/whl/cu126 (a CUDA 12.6 build)
#
# When PyTorch's CPU index cannot be reached within PROBE_TIMEOUT seconds (default 5; offline
# machines, firewalled CI) or has no wheel for this platform, it falls back to the default index and
# says so. Used by the Makefile: `make venv TORCH_INDEX=cpu`.
#
# usage: tools/install-torch.sh PY VERSION [INDEX]
set -euo pipefail

py=${1:?usage: install-torch.sh PY VERSION [INDEX]}
version=${2:?usage: install-torch.sh PY VERSION [INDEX]}
index=${3:-auto}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
probe_timeout=${PROBE_TIMEOUT:-5}

if [ "$index" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "install-torch: NVIDIA GPU found: torch==$version from the default index (a CUDA build)"
        index=default
    else
        index=cpu
    fi
fi

if [ "$index" = cpu ]; then
    # A short probe first, so an unreachable index costs seconds, not pip's retries.
    if "$py" - "$cpu_index/torch/" "$probe_timeout" <<'EOF' 2>/dev/null
import sys
import urllib.request

urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).close()
EOF
    then
        echo "install-torch: no GPU: torch==$version, CPU build, from $cpu_index"
        if "$py" -m pip install -q "torch==$version" --index-url "$cpu_index"; then
            exit 0
        fi
        echo "install-torch: warning: $cpu_index has no usable torch==$version for this platform;" \
             "falling back to the default index" >&2
    else
        echo "install-torch: warning: $cpu_index is unreachable (${probe_timeout} s probe);" \
             "installing torch==$version from the default index. On Linux without a GPU that may be" \
             "PyPI's CUDA build (several GB); a local CPU wheel (pip --find-links) is used when configured" >&2
    fi
    index=default
fi

if [ "$index" = default ]; then
    exec "$py" -m pip install -q "torch==$version"
fi
echo "install-torch: torch==$version from $index"
exec "$py" -m pip install -q "torch==$version" --index-url "$index"
