#!/usr/bin/env bash
# Install a single-node Slurm (slurmctld, slurmd, slurm-client) and munge for tests/test_slurm.py.
#
# Idempotent: does nothing when the binaries are already on PATH. Needs root (or passwordless sudo)
# and a Debian/Ubuntu apt; exits non-zero otherwise, and the Slurm tests then skip with a reason.
# The packages' own services are NOT started or enabled: the test fixture (tests/slurm_cluster.py)
# runs its own daemons on private ports with a private state directory and munge key.
set -euo pipefail

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ "${#need[@]}" -eq 0 ]; then
    echo "install-slurm: slurmctld, slurmd, sbatch and munged already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install-slurm: need root or passwordless sudo to install ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-slurm: apt-get not found; install ${need[*]} with the system's package manager" >&2
    exit 1
fi

# Keep the packages' maintainer scripts from starting system services (no init system in CI
# containers; and the fixture's daemons must be the only ones). policy-rc.d exit 101 = "not allowed".
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || { echo "install-slurm: $bin missing after install" >&2; exit 1; }
done
echo "install-slurm: installed ${need[*]}"
