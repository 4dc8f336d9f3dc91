"""`corticalrnn bench gpu`: says it needs CUDA on a CPU machine, and its code path runs on CPU at tiny
sizes (`--device cpu --tiny`: emulated graph chunks instead of capture, gloo instead of NCCL)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from corticalrnn.bench import gpu
from corticalrnn.cli import main


def test_without_cuda_says_it_needs_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "needs CUDA" in err and "Traceback" not in err
    assert not out.exists()


def test_tiny_cpu_run_exercises_every_part(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    fig = json.loads(out.read_text())
    parts = fig["parts"]
    assert list(parts) == ["env", "cpu_vs_gpu", "precisions", "ddp", "ten_percent", "local", "graphs",
                           "ten_percent_graphs", "local_long"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    for name in parts:
        assert name in text
    assert "load average" in text and fig["loadavg_end"]
    assert parts["env"]["gemm_fp32_tflops"] > 0 and parts["env"]["copy_gbs"] > 0
    for case in parts["cpu_vs_gpu"]["cases"]:  # here both sides run on the CPU: the code path only
        assert case["match"] and case["rates_rel_diff"] == 0 and case["cpu_nonfinite"] == 0
    for case in parts["graphs"]["cases"]:  # the chunked path ran (emulated) and matched the plain loop
        assert case["match"] and case["replays"] > 0 and case["n_grads"] > 0
    rows = parts["precisions"]["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16", "fp16"]
    for r in rows:
        assert r["status"] == "ok" and not any(r["violations_at_checks"]) and r["params_finite"]
        assert len(r["violations_at_checks"]) == 2  # every check_every=2 of 4 steps
        assert r["initial_rates_nonfinite"] == 0 and r["initial_rates_max"] > 0
    ddp = parts["ddp"]
    assert ddp["backend"] == "gloo" and ddp["destroyed"] and ddp["max_param_diff"] == 0.0
    assert ddp["losses_single"] == ddp["losses_ddp"] and not torch.distributed.is_initialized()
    for name, graphs in (("ten_percent", False), ("ten_percent_graphs", True)):
        ten = parts[name]
        assert [(r["precision"], r["cuda_graphs"]) for r in ten["rows"]] == [("bf16", graphs),
                                                                             ("fp32", graphs)]
        assert all(r["step_s"] > 0 and r["flop_bound_s"] > 0 for r in ten["rows"]) and ten["best"]
        assert all(r["loss"] > 0 for r in ten["rows"])
    local = parts["local"]
    assert local["largest"]["fraction"] == 0.004 and local["largest"]["recurrent_synapses"] > 0
    assert local["largest"]["finite"] and parts["local_long"]["finite"]
    assert [a["status"] for a in local["attempts"]] == ["ok"]  # the largest that fits: no smaller try
    assert parts["local_long"]["steps"] == 8 and parts["local_long"]["step_s"] > 0
    assert torch.get_num_threads() > 0


def test_a_failing_part_is_recorded_and_the_rest_still_run(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(gpu, "part_env", broken)
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--threads", "1", "--parts", "env,ddp",
                 "--inline", "--json", str(out)]) == 1
    assert "env did not pass" in capsys.readouterr().err
    parts = json.loads(out.read_text())["parts"]
    assert parts["env"]["status"] == "error" and "simulated failure" in parts["env"]["error"]
    assert parts["ddp"]["status"] == "ok"


def test_budget_skips_parts_and_a_hung_part_is_left_behind(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--budget-s", "0", "--json", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert {p["status"] for p in parts.values()} == {"skipped"}
    results: dict = {"parts": {}}
    runner = gpu._Runner(60.0, tmp_path / "hang.json", results)
    release = threading.Event()

    def hangs(out):
        out["first"] = 1
        release.wait(30)

    runner.part("hangs", 0.0, 0.2, hangs)
    release.set()
    assert results["parts"]["hangs"]["status"] == "timeout" and runner.abandoned == ["hangs"]
    assert results["parts"]["hangs"]["first"] == 1  # what it had found is kept
    assert json.loads((tmp_path / "hang.json").read_text())["parts"]["hangs"]["status"] == "timeout"
    with pytest.raises(Exception, match="unknown parts"):
        gpu.run_bench(gpu_args(["--device", "cpu", "--parts", "nope"]))


def gpu_args(argv: list[str]):
    from corticalrnn.bench.cli import _bench_parser

    return _bench_parser("gpu").parse_args(argv)
