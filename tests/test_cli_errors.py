"""The CLI's error contract: a CorticalRNNError prints its message; any other library error inside a
subcommand (ValueError, OSError from numpy/zarr/h5py ...) prints one line naming the command, exit 1,
with the traceback only under --debug (before or after the command) or CORTICALRNN_DEBUG=1."""

from __future__ import annotations

import errno

import pytest

import corticalrnn.evaluate as evaluate_mod
from corticalrnn.cli import DEBUG_ENV, main
from corticalrnn.errors import DataMismatchError

ARGS = ["evaluate", "run/best.pt", "test.zarr"]


def _raise(exc: BaseException):
    def run(args):
        raise exc
    return run


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.mark.parametrize("exc, shown", [
    (ValueError("operands could not be broadcast together with shapes (3,) (4,)\nsecond line"),
     "ValueError: operands could not be broadcast together with shapes (3,) (4,)"),
    (OSError(errno.ENOSPC, "No space left on device", "out/report.json"),
     "OSError: [Errno 28] No space left on device: 'out/report.json'"),
    (KeyError("events/data"), "KeyError: 'events/data'"),
    (RuntimeError(), "RuntimeError"),
])
def test_library_error_is_one_line_naming_the_command(monkeypatch, capsys, exc, shown):
    monkeypatch.setattr(evaluate_mod, "run", _raise(exc))
    assert main(ARGS) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"corticalrnn evaluate: error: {shown}"), err
    assert "--debug" in err and DEBUG_ENV in err and "second line" not in err


def test_long_messages_are_shortened(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_mod, "run", _raise(ValueError("x" * 5000)))
    assert main(ARGS) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 700 and "x..." in err


@pytest.mark.parametrize("argv", [["--debug", *ARGS], [*ARGS, "--debug"], ARGS])
def test_debug_flag_or_env_shows_the_traceback(monkeypatch, argv):
    if argv is ARGS:
        monkeypatch.setenv(DEBUG_ENV, "1")
    monkeypatch.setattr(evaluate_mod, "run", _raise(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        main(argv)


def test_debug_env_zero_means_off(monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "0")
    monkeypatch.setattr(evaluate_mod, "run", _raise(ValueError("boom")))
    assert main(ARGS) == 1
    assert "ValueError: boom" in capsys.readouterr().err


def test_corticalrnn_error_keeps_its_message(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_mod, "run", _raise(DataMismatchError("test.zarr: lacks 3 neurons")))
    assert main(ARGS) == 1
    assert capsys.readouterr().err == "corticalrnn evaluate: error: test.zarr: lacks 3 neurons\n"
    assert main(["--debug", *ARGS]) == 1  # with --debug: the traceback, then the same message
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("corticalrnn evaluate: error: test.zarr: lacks 3 neurons\n")


def test_keyboard_interrupt_and_success_unchanged(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_mod, "run", _raise(KeyboardInterrupt()))
    assert main(ARGS) == 130
    monkeypatch.setattr(evaluate_mod, "run", lambda args: 0)
    assert main(ARGS) == 0 and main(["--debug", *ARGS]) == 0


def test_real_library_error_from_a_command(tmp_path, capsys):
    """A real one: a checkpoint file that torch cannot read is a CorticalRNNError (message kept), and a
    store path that is a plain file fails inside zarr/the store reader: one line either way."""
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"not a checkpoint")
    store = tmp_path / "test.zarr"
    store.write_text("not a store")
    rc = main(["evaluate", str(ck), str(store), "--device", "cpu", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("corticalrnn evaluate: error: "), err
