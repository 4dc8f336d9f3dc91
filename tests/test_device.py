"""Device honesty: what train and evaluate run on is printed, and a GPU that was asked for but
cannot be used is a clear error with the fix (never a silent CPU run, never torch's AssertionError)."""

from __future__ import annotations

import pytest
import torch

from corticalrnn.cli import main
from corticalrnn.device import DeviceError, describe, gpu_requests, resolve_device

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                 {"SLURM_GPUS_ON_NODE": "0"}, {"SLURM_JOB_GPUS": "(null)"}])
def test_no_gpu_asked_for(env: dict[str, str]) -> None:
    assert gpu_requests(env) == []


@needs_no_cuda
def test_auto_without_cuda_and_nothing_requested_is_cpu() -> None:
    assert resolve_device("auto", environ={}) == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "0"}, {"SLURM_JOB_GPUS": "0,1"},
                                 {"SLURM_GPUS_ON_NODE": "4"}, {"SLURM_GPUS_PER_NODE": "a100:2"}])
def test_auto_with_an_allocated_but_unusable_gpu_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device("auto", environ=env)
    msg = str(err.value)
    name, value = next(iter(env.items()))
    assert f"{name}={value}" in msg
    assert "train.device=cpu" in msg  # how to run on the CPU on purpose
    if torch.version.cuda is None:
        assert "CPU build" in msg and "Install" in msg
    else:
        assert "--nv" in msg and "nvidia-smi" in msg


def test_explicit_cpu_is_honoured_even_with_gpus_allocated() -> None:
    assert resolve_device("cpu", environ={"CUDA_VISIBLE_DEVICES": "0"}) == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(name: str) -> None:
    with pytest.raises(DeviceError, match="was asked for but"):
        resolve_device(name, environ={})


def test_unknown_device_name() -> None:
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0", environ={})


def test_describe_says_device_precision_and_threads() -> None:
    line = describe(torch.device("cpu"), "fp32", "bf16", workers=2)
    assert line.startswith("device cpu (")
    assert "precision fp32 (precision bf16 asked for; the CPU runs fp32)" in line
    assert f"{torch.get_num_threads()} torch threads" in line and "2 loader workers" in line
    assert torch.__version__ in line


@needs_no_cuda
def test_evaluate_cli_with_cuda_requested(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "best.pt"), str(tmp_path / "s.zarr"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "corticalrnn evaluate: error: device 'cuda' was asked for" in err and "--device cpu" in err
    assert "Traceback" not in err and "AssertionError" not in err


@needs_no_cuda
def test_train_cli_under_slurm_gpu_allocation_fails_fast(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    rc = main(["train", "--run-dir", str(tmp_path / "run"), "--store", str(tmp_path / "missing.zarr"),
               "--subset", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "a GPU was requested or allocated" in err and "SLURM_JOB_GPUS=0" in err
    assert not (tmp_path / "run").exists()


def test_trainer_prints_device_and_plain_lines_without_a_terminal(tmp_path, capsys) -> None:
    from test_train import make_cfg, make_trainer

    cfg = make_cfg(progress=True, device="cpu", precision="bf16")
    make_trainer(cfg, tmp_path / "run").fit()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("train: device cpu (")
    assert "precision fp32 (precision bf16 asked for" in lines[0]
    assert "\r" not in err  # no tqdm bar when stderr is not a terminal
    assert any(line.startswith("train: step 11/11 loss ") and "windows/s" in line for line in lines), err
    assert any(line.startswith("train: step 4 validation loss: observed ") for line in lines), err
