"""`corticalrnn bench model` at a tiny size: it runs, reports every ratio, and writes its JSON."""

from __future__ import annotations

import json

from corticalrnn.cli import main


def test_bench_model_reports_ratios(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--scale", "0.005", "--sizes", "0.005", "--window-ms", "80",
                 "--fine-window-ms", "4", "--repeats", "1", "--naive-max-steps", "2", "--sheet-local", "0.01",
                 "--threads", "1", "--cuda-graphs", "--graph-chunk", "3", "--rounds", "2", "--skip-sparse",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for col in ("fast/bound", "naive/fast", "naive/bound", "step/bound"):
        assert col in text
    fig = json.loads(out.read_text())
    assert fig["cuda_graphs"] and fig["device"] == "cpu" and fig["gemm_gflops"] > 0
    # the GEMM rate is measured (best of N, with its spread) right before each case: the first, then per
    # round the coarse and fine fast paths and naive baselines (the scaling row at the main size reuses
    # coarse; the local kernels are ratios of steps, without a bound)
    gemm = fig["gemm"]
    assert fig["rounds"] == 2 and len(gemm["measurements"]) == 1 + 2 * 4
    assert 0 < gemm["gflops_min"] <= gemm["gflops_max"]
    for col in ("naive/fast spread", "fast/bound spread"):
        assert col in text
    assert all(g["spread"] >= 0 and g["repeats"] == 5 for g in gemm["measurements"])
    assert fig["coarse"]["gemm"] in gemm["measurements"] and "spread" in text
    assert "load average" in text and len(fig["load_average"]["start"]) == 3
    for case, steps in (("coarse", 4), ("fine", 4)):
        res = fig[case]
        assert res["steps"] == steps and res["fast"]["step_s"] > 0 and res["flop_bound_s"] > 0
        assert res["naive"]["extrapolated"] and res["naive"]["measured_steps"] == 2
        # ratios are medians of per-round ratios: with two rounds, the mean of the two
        f, n = res["fast"]["round_step_s"], res["naive"]["round_step_s"]
        assert len(f) == len(n) == 2 and res["naive_over_fast_spread"] >= 0
        assert abs(res["naive_over_fast"] - (n[0] / f[0] + n[1] / f[1]) / 2) < 1e-9
    # the scaling row at the main size is the main coarse measurement, not a second run
    assert fig["scaling"][0]["step_s"] == fig["coarse"]["fast"]["step_s"]
    sheet = fig["sheet_local"]
    assert sheet["V1 neurons"] == 936 and 0 < sheet["recurrent_synapses"] and sheet["step_s"] > 0


def test_bench_model_local_kernels(tmp_path, capsys):
    """The local-model kernels and the alternated dense-vs-CSR products (one round, no naive baseline)."""
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--scale", "0.005", "--sizes", "0.005", "--window-ms", "80",
                 "--fine-window-ms", "4", "--repeats", "1", "--threads", "1", "--rounds", "1", "--skip-naive",
                 "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    local = fig["local_sparse_step"]
    assert [r["kernel"].split(" ")[0] for r in local] == ["dense", "CSR", "CSR", "sparse"]
    assert len({r["synapses (M)"] for r in local[:3]}) == 1  # the same model, three ways of computing it
    # sparse storage samples its synapses without a dense mask: another draw of the same law
    assert abs(local[3]["synapses (M)"] / local[0]["synapses (M)"] - 1) < 0.25
    assert all(r["step_s"] > 0 for r in local) and len(fig["sparse_vs_dense"]) == 3
    assert local[0]["speedup"] == 1.0 and all(r["pairs"] == 15 for r in fig["sparse_vs_dense"])
    assert "alternated" in capsys.readouterr().out
