"""`corticalrnn bench model` at a tiny size: it runs, reports every ratio, and writes its JSON."""

from __future__ import annotations

import json

from corticalrnn.cli import main


def test_bench_model_reports_ratios(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--scale", "0.005", "--sizes", "0.005", "--window-ms", "80",
                 "--fine-window-ms", "4", "--repeats", "1", "--naive-max-steps", "2", "--sheet-local", "0.01",
                 "--threads", "1", "--cuda-graphs", "--graph-chunk", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for col in ("fast/bound", "naive/fast", "naive/bound", "step/bound"):
        assert col in text
    fig = json.loads(out.read_text())
    assert fig["cuda_graphs"] and fig["device"] == "cpu" and fig["gemm_gflops"] > 0
    # the GEMM rate is measured (best of N, with its spread) right before each case: the first, the
    # coarse and fine fast paths and naive baselines (the scaling row at the main size reuses coarse)
    gemm = fig["gemm"]
    assert len(gemm["measurements"]) == 5 and 0 < gemm["gflops_min"] <= gemm["gflops_max"]
    assert all(g["spread"] >= 0 and g["repeats"] == 5 for g in gemm["measurements"])
    assert fig["coarse"]["gemm"] in gemm["measurements"] and "spread" in text
    assert "load average" in text and len(fig["load_average"]["start"]) == 3
    for case, steps in (("coarse", 4), ("fine", 4)):
        res = fig[case]
        assert res["steps"] == steps and res["fast"]["step_s"] > 0 and res["flop_bound_s"] > 0
        assert res["naive"]["extrapolated"] and res["naive"]["measured_steps"] == 2
    # the scaling row at the main size is the main coarse measurement, not a second run
    assert fig["scaling"][0]["step_s"] == fig["coarse"]["fast"]["step_s"]
    local = fig["local_sparse_step"]
    assert [r["kernel"].split(" ")[0] for r in local] == ["dense", "CSR", "CSR", "sparse"]
    assert len({r["synapses (M)"] for r in local[:3]}) == 1  # the same model, three ways of computing it
    # sparse storage samples its synapses without a dense mask: another draw of the same law
    assert abs(local[3]["synapses (M)"] / local[0]["synapses (M)"] - 1) < 0.25
    assert all(r["step_s"] > 0 for r in local) and len(fig["sparse_vs_dense"]) == 3
    sheet = fig["sheet_local"]
    assert sheet["V1 neurons"] == 936 and 0 < sheet["recurrent_synapses"] and sheet["step_s"] > 0
