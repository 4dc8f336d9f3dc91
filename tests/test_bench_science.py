"""`corticalrnn bench science --quick`: the whole science path (LSV1M-like data with annotations and the
connectome, extract, trim, identity and simulator variants, baselines, criteria) runs end to end."""

from __future__ import annotations

import argparse

import pytest

from corticalrnn.bench import science


@pytest.mark.slow
def test_bench_science_quick(tmp_path):
    p = argparse.ArgumentParser()
    science.add_arguments(p)
    # model overrides reach every variant: the adaptive unit and borrowed hidden biases run end to end
    args = p.parse_args(["--quick", "--out", str(tmp_path), "--observed", "0.5", "--variants", "identity",
                         "simulator", "--set", 'neurons.model="adaptive"',
                         "--set", 'neurons.hidden_weights="borrowed"'])
    res = science.run_bench(args)
    assert [r["variant"] for r in res["runs"]] == ["identity", "simulator"]
    for run in res["runs"]:
        pops = {(r["population"], r["neurons"]) for r in run["table"]}
        assert ("L4 E", "hidden") in pops and ("L2/3 I", "observed") in pops
        keys = [science._column("model", "trial_avg_r_median"),
                science._column("population", "trial_avg_r_median"),
                science._column("model", "bps_vs_population"), "imgspec r(true)", "r(true) ceiling",
                "imgspec ceiling", "r_avg of true rates"]
        assert all(k in run["table"][0] for k in keys)
        assert len(run["criteria"]) == sum(1 for r in run["table"] if r["neurons"] == "hidden")
    assert {n["sheet"] for n in res["neighbours"]} == {"V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"}
