"""Peak memory of extracting a datastore whose analysis pickle holds a large connectome.

    .venv/bin/python tests/measure_connections_memory.py [N_SYNAPSES] [WORKDIR]

Writes a small synthetic datastore (scale 0.1), replaces its ``datastore.analysis.pickle`` by one
Mozaik ``Connections`` structure of N synapses (default 10^7, float64 ``[N, 3]`` weights and
delays as Mozaik stores them), then runs ``extract_folder`` in fresh processes with and without
the connectome and prints each one's peak RSS (``VmHWM``). Not collected by pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _prepare(work: Path, n: int) -> Path:
    sys.path.insert(0, str(HERE))
    from synthdata import make_datastore
    from test_identity import _big_analysis_pickle

    folder = make_datastore(work, images=(50000, 50001), seed=0)
    _big_analysis_pickle(folder, n, seed=0)
    return folder


def _extract(folder: str, out: str, connections: bool) -> None:
    import resource
    import time

    from extract.datastore import ExtractOptions, extract_folder

    t0 = time.perf_counter()
    res = extract_folder(folder, out, ExtractOptions(connections=connections))
    # VmHWM: this process image's peak RSS (ru_maxrss would carry the launcher's peak over exec)
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")]
    peak_kib = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n_synapses": res.n_synapses,
                "peak_rss_mib": peak_kib / 1024,
                "seconds": time.perf_counter() - t0,
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--extract":
        _extract(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
        return
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 10_000_000
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="connmem."))
    folder = _prepare(work, n)
    size = (folder / "datastore.analysis.pickle").stat().st_size
    print(f"analysis pickle: {size / 2**20:.0f} MiB, {n} synapses")
    for flag in ("0", "1"):
        out = work / f"out{flag}.h5"
        cmd = [sys.executable, __file__, "--extract", str(folder), str(out), flag]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(("with" if flag == "1" else "without") + " connectome:", line)


if __name__ == "__main__":
    main()
