"""The training loop (one of it): AdamW, clipping, lr schedule, EMA, mixed precision, DDP,
validation-based model selection, atomic periodic/on-signal checkpoints, exact resume.

Reading order: :class:`Trainer.fit` is the loop; everything else is a helper it calls.

Exactness of ``--resume``: the data order of an epoch is a function of ``(seed, epoch)``
(:func:`~corticalrnn.data.epoch_batches`); a checkpoint records the epoch and the
position inside it, the model/optimizer/scheduler/scaler/EMA states and the torch RNG state, and
is taken only at step boundaries. A run stopped after k steps and resumed therefore computes the
same losses as one that never stopped (tested on CPU).

Signals: SIGTERM and SIGUSR1 only set a flag; the loop notices it at the next step boundary,
writes ``last.pt`` and returns with status ``"interrupted"`` (the CLI exits with
:data:`EXIT_REQUEUE` so a Slurm script can requeue the job and start it again with ``--resume``).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from corticalrnn.atomic import write_text_atomic
from corticalrnn.data.batches import TrainingData
from corticalrnn.data.loader import epoch_batches
from corticalrnn.errors import CorticalRNNError
from corticalrnn.train import distributed as ddp
from corticalrnn.train.checkpoint import (
    load_checkpoint,
    load_state_strict,
    masked_params,
    pack_masked,
    pack_optimizer,
    save_checkpoint,
    unpack_optimizer,
)
from corticalrnn.train.config import OptimConfig, ScheduleConfig, TrainConfig, to_toml
from corticalrnn.train.runlog import RunLog
from corticalrnn.train.spec import check_same_architecture

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped on a signal after checkpointing; run again with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingDiverged(CorticalRNNError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    step: int
    best_val: float
    best_step: int
    run_dir: Path

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


def lr_factor(step: int, sched: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) for the configured schedule."""
    if sched.kind == "constant":
        return min(1.0, (step + 1) / sched.warmup_steps) if sched.warmup_steps > 0 else 1.0
    if sched.kind == "onecycle":
        up = max(1, int(sched.pct_start * max_steps))
        start, final = 1 / 25, 1 / 1e4
        if step < up:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / up))
        p = min(1.0, (step - up) / max(1, max_steps - up))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    # cosine with linear warmup
    if step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    p = min(1.0, (step - sched.warmup_steps) / max(1, max_steps - sched.warmup_steps))
    return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


PLAIN_LOG_EVERY_S = 30.0  # plain progress lines (no terminal) at most this often (and at the end)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def resolve_device(name: str, cpu_hint: str = "--set train.device=cpu") -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else CPU; a GPU that was requested or
    allocated but is unusable is a clear error (:func:`corticalrnn.device.resolve_device`)."""
    from corticalrnn.device import resolve_device as _resolve

    return _resolve(name, cpu_hint=cpu_hint)


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32 on CPU always; ``auto`` on GPU is bf16 where supported, else fp16 (with GradScaler)."""
    if device.type != "cuda":
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def adamw(params: Any, o: OptimConfig) -> torch.optim.AdamW:
    """AdamW as configured; the fused kernel where this torch has it for the parameters' device.

    Measured on CPU (2 threads, the 85.8 M parameters of the 10 % model): one step 0.054-0.079 s
    fused against 0.56 s for the default for-loop implementation and 0.38 s for ``foreach``.
    """
    params = list(params)
    kw = {"lr": o.lr, "betas": (o.beta1, o.beta2), "eps": o.eps, "weight_decay": o.weight_decay}
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype/torch
        return torch.optim.AdamW(params, **kw)

class Trainer:
    """Trains ``model`` on ``train_data``; selects the best step on ``val_data`` (training images).

    ``observed`` is the bool mask over the model's V1 units that the loss sees. ``spec`` describes
    the architecture (saved in checkpoints, checked on resume). ``penalty(rates, target)`` (optional)
    is added to the training loss (not to the logged or validation loss), e.g. a
    :class:`~corticalrnn.train.rate_prior.HiddenRatePrior`. ``project`` (optional) is called
    after every optimizer step, e.g. the model's Dale's-law projection. ``teacher_fraction(step)``
    (optional) is the fraction of observed neurons teacher-forced at that step (the model's
    ``forward(lgn, teacher, teacher_mask, teacher_fraction)``); validation always runs free.
    ``autocast`` wraps the forward pass in ``torch.autocast`` for bf16/fp16; models that pick
    their own matmul dtype (CorticalRNN's ``precision``) pass False and get only the loss scaler.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_data: TrainingData,
                 val_data: TrainingData | None, observed: torch.Tensor, run_dir: str | Path,
                 spec: dict[str, Any], loss_fn: LossFn, subset: dict[str, Any] | None = None,
                 project: Callable[[], None] | None = None, split: dict[str, Any] | None = None,
                 teacher_fraction: Callable[[int], float] | None = None, autocast: bool = True,
                 tensorboard: bool = True,
                 penalty: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        loop = cfg.train
        self.device = resolve_device(loop.device)
        if loop.threads > 0:
            torch.set_num_threads(loop.threads)
        self.dist = ddp.init_distributed(self.device)
        self.precision = resolve_precision(loop.precision, self.device)
        self.run_dir = Path(run_dir)
        self.spec, self.subset, self.loss_fn, self.project = spec, subset, loss_fn, project
        self.teacher_fraction, self.use_autocast, self.split = teacher_fraction, autocast, split
        self.penalty = penalty
        self.train_data, self.val_data = train_data, val_data
        if len(train_data) == 0:
            raise CorticalRNNError("no training windows (check the store and the image split)")
        self.observed = observed.to(self.device)
        self.hidden = ~self.observed

        self.raw_model = model.to(self.device)
        self.model: nn.Module = self._ddp_model()
        self.optimizer = adamw(self.raw_model.parameters(), cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.schedule, loop.max_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if loop.ema_decay > 0:
            # parameters only: every buffer is fixed at construction, and averaging integer buffers
            # (sparsity patterns, mask fingerprints) goes through float32 and corrupts values > 2^24
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.raw_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(loop.ema_decay),
                use_buffers=False)
        self.progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf,
                         "best_step": -1, "windows_seen": 0}
        self.log = RunLog(self.run_dir, self.dist.is_main, tensorboard)
        self._stop_signal: int | None = None
        self._saved_step = -1  # step of the last last.pt written by this process
        self._rings: dict[str, Any] = {}  # reused dense batch buffers (corticalrnn.data.DenseRing)

    # ----------------------------------------------------------------- state
    def autocast(self):  # noqa: ANN201 - context manager
        if self.use_autocast and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see corticalrnn.train.checkpoint); masked blocks packed."""
        masks = masked_params(self.raw_model)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.cfg.to_dict(),
            "spec": self.spec,
            "model": pack_masked(self.raw_model.state_dict(), masks),
            "ema": pack_masked(self.ema.state_dict(), masks, "module.") if self.ema is not None else None,
            "optimizer": pack_optimizer(self.optimizer.state_dict(), self.raw_model),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "progress": dict(self.progress),
            "subset": self.subset,
            "split": self.split,
            "precision": self.precision,
        }

    def save(self, name: str) -> Path | None:
        """Rank 0 writes ``run_dir/name`` atomically; every rank waits for it."""
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir / name, self.state())
        ddp.barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Restore the full training state from a checkpoint (for ``--resume``)."""
        ck = load_checkpoint(path, map_location=self.device)
        check_same_architecture(ck["spec"], self.spec, path, ignore=())
        load_state_strict(self.raw_model, ck["model"], path)
        if self.ema is not None:
            if ck.get("ema") is None:
                raise CorticalRNNError(f"{path}: checkpoint has no EMA weights but train.ema_decay > 0")
            self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(unpack_optimizer(ck["optimizer"], self.raw_model))
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler.is_enabled() and ck.get("scaler") is not None:
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if self.device.type == "cuda" and "cuda" in ck["rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
        self.progress.update(ck["progress"])
        self._saved_step = self.progress["step"]
        self.log.truncate_after(self.progress["step"])

    def init_weights_from(self, path: str | Path) -> None:
        """Start from a trained model's weights (fine-tuning; the observed set may differ)."""
        ck = load_checkpoint(path, map_location=self.device)
        check_same_architecture(ck["spec"], self.spec, path)
        weights = ck["ema"] if ck.get("ema") is not None else ck["model"]
        if ck.get("ema") is not None:  # AveragedModel keys are "module.<name>" plus n_averaged
            weights = {k[len("module."):]: v for k, v in weights.items() if k.startswith("module.")}
        load_state_strict(self.raw_model, weights, path)
        if self.ema is not None:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.raw_model,
                multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.cfg.train.ema_decay),
                use_buffers=False)

    # ------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum  # only a flag; the loop acts at the next step boundary

    def _install_signals(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    # ---------------------------------------------------------------- steps
    def _forward(self, model: nn.Module, batch: dict[str, torch.Tensor], fraction: float) -> torch.Tensor:
        lgn = batch["lgn"].to(self.device, non_blocking=True)
        # truncated BPTT (objective.tbptt_steps): only asked of models that take it
        kw = {"detach_every": self.cfg.objective.tbptt_steps} if self.cfg.objective.tbptt_steps else {}
        if fraction > 0:
            v1 = batch["v1"].to(self.device, non_blocking=True)
            return model(lgn, teacher=v1, teacher_mask=self.observed, teacher_fraction=fraction, **kw)
        return model(lgn, **kw)

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """One optimizer step; returns (loss, grad norm). Raises TrainingDiverged on NaN/inf."""
        target = batch["v1"].to(self.device, non_blocking=True)
        self.model.train()
        with self.autocast():
            fraction = 0.0 if self.teacher_fraction is None else self.teacher_fraction(self.progress["step"])
            rates = self._forward(self.model, batch, fraction)
        loss = self.loss_fn(rates.float(), target, self.observed)
        total = loss if self.penalty is None else loss + self.penalty(rates, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        loss_v, gn_v = float(loss.detach()), float(grad_norm)
        # fp16: an inf gradient is an overflow the scaler handles by skipping the step
        bad = not math.isfinite(loss_v) or (not self.scaler.is_enabled() and not math.isfinite(gn_v))
        if ddp.any_flag(bad, self.device):
            last = self.run_dir / "last.pt"
            kept = (f"the last good checkpoint is {last} (step {self._saved_step})" if self._saved_step >= 0
                    else "no checkpoint was written yet")
            what = "loss" if not math.isfinite(loss_v) else "gradient"
            raise TrainingDiverged(
                f"non-finite {what} at step {self.progress['step'] + 1} (loss={loss_v}, grad norm={gn_v}); "
                f"stopped without taking that step; {kept}. Lower optim.lr, set optim.grad_clip, or use "
                f"train.precision=fp32/bf16.")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.project is not None:
            with torch.no_grad():
                self.project()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        self.scheduler.step()
        return loss_v, gn_v

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Free-running Poisson loss on the validation windows, observed (selection) and hidden."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        model = self.ema.module if self.ema is not None else self.raw_model
        model.eval()
        idx = list(range(self.dist.rank, len(self.val_data), self.dist.world_size))
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        bs = self.cfg.train.batch_size
        plan = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        for batch in self._batches(self.val_data, plan, "val"):
            target = batch["v1"].to(self.device)
            with self.autocast():
                rates = self._forward(model, batch, 0.0)
            n = target.shape[0]
            sums[0] += float(self.loss_fn(rates.float(), target, self.observed)) * n
            if bool(self.hidden.any()):
                sums[1] += float(self.loss_fn(rates.float(), target, self.hidden)) * n
            sums[2] += n
        sums = ddp.all_sum(sums)
        out = {"loss": float(sums[0] / sums[2])}
        if bool(self.hidden.any()):
            out["loss_hidden"] = float(sums[1] / sums[2])
        return out

    def _ring(self, which: str, batches: Sequence[Sequence[int]]) -> Any:
        """The reused dense buffers of ``which`` (``train``: 2 slots, one lent to the step and one
        being filled; ``val``: 1 slot), kept across epochs; rebuilt only for a larger batch."""
        from corticalrnn.data import DenseRing

        size = max([self.cfg.train.batch_size, *(len(b) for b in batches)])
        ring = self._rings.get(which)
        if ring is None or ring.max_batch < size:
            ring = self._rings[which] = DenseRing(size, self.device, 2 if which == "train" else 1)
        return ring

    def _batches(self, data: TrainingData, batches: Sequence[Sequence[int]],
                 which: str = "train") -> Generator[dict[str, torch.Tensor], None, None]:
        """Batches of ``data`` in the order of ``batches`` (:func:`corticalrnn.data.dense_batches`).

        Data with sparse events (``corticalrnn.data.WindowBatches``): they are scattered into reused
        buffers on the device (``corticalrnn.data.DenseRing``), read and scattered by prefetching
        threads (training with ``data.num_workers > 0``: read by spawn workers). Each batch is valid
        until the next is requested (the ring's ownership rule): the loop below uses a batch only
        within its step. Dense-only data: its ``batch`` (training: through a DataLoader).
        """
        from corticalrnn.data import dense_batches, has_events

        ring = self._ring(which, batches) if has_events(data) else None
        workers = self.cfg.data.num_workers if which == "train" else None
        yield from dense_batches(data, batches, self.device, ring, workers)

    # ----------------------------------------------------------------- loop
    def _ddp_model(self) -> nn.Module:
        """The model the training step runs: the DDP wrapper of ``raw_model`` on several ranks."""
        if not self.dist.enabled:
            return self.raw_model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # every buffer (signs, masks, sparsity patterns, permutations) is fixed at construction
        # and identical on all ranks: no need to re-broadcast them (masks alone are ~N^2 bytes)
        return nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids, broadcast_buffers=False)

    def fit(self, resume: str | Path | None = None, init_from: str | Path | None = None) -> TrainResult:
        """Train until ``train.max_steps`` or a stop signal; return how it ended."""
        loop, p = self.cfg.train, self.progress
        if self.model is self.raw_model:  # released by an earlier fit
            self.model = self._ddp_model()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.run_dir / "config.toml", to_toml(self.cfg.to_dict()))
            if self.subset is not None:
                _atomic_write(self.run_dir / "subset.json", json.dumps(self.subset, indent=1))
            if self.split is not None:
                _atomic_write(self.run_dir / "split.json", json.dumps(self.split, indent=1))
        if init_from is not None:
            self.init_weights_from(init_from)
        if resume is not None:
            self.load(resume)
        elif self.dist.is_main:
            self.log.clear()
            torch.manual_seed(loop.seed)
        old_handlers = self._install_signals()
        if self.dist.is_main:
            from corticalrnn.device import describe

            ranks = f", {self.dist.world_size} processes (DDP)" if self.dist.enabled else ""
            print(f"train: {describe(self.device, self.precision, loop.precision, self.cfg.data.num_workers)}"
                  f"{ranks}", file=sys.stderr, flush=True)
        report = loop.progress and self.dist.is_main
        # Not a terminal (Slurm log, pipe): plain lines instead of tqdm's carriage-return updates.
        plain = report and not _is_terminal(sys.stderr)
        last_plain = -math.inf
        bar = tqdm(total=loop.max_steps, initial=p["step"], file=sys.stderr, dynamic_ncols=True,
                   disable=not report or plain, desc="train")
        t_start = t_last = time.perf_counter()
        windows_since = 0
        status = "finished"
        saved_at = -1
        epoch_data: Generator[dict[str, torch.Tensor], None, None] | None = None
        try:
            while p["step"] < loop.max_steps and status == "finished":
                batches = epoch_batches(len(self.train_data), loop.batch_size, p["epoch"], loop.seed,
                                            self.dist.rank, self.dist.world_size)
                epoch_data = self._batches(self.train_data, batches[p["batch_in_epoch"]:])
                for batch in epoch_data:
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss, grad_norm = self.train_step(batch)
                    n_win = batch["v1"].shape[0] * self.dist.world_size
                    p["step"] += 1
                    p["batch_in_epoch"] += 1
                    p["windows_seen"] += n_win
                    windows_since += n_win
                    step = p["step"]
                    bar.update(1)
                    if step % loop.log_every == 0 or step == loop.max_steps:
                        now = time.perf_counter()
                        wps = windows_since / max(now - t_last, 1e-9)
                        t_last, windows_since = now, 0
                        self.log.log({"step": step, "epoch": p["epoch"], "split": "train", "loss": loss,
                                      "lr": lr, "grad_norm": grad_norm, "windows_per_s": wps,
                                      "elapsed_s": now - t_start})
                        bar.set_postfix(loss=f"{loss:.4g}", win_s=f"{wps:.1f}")
                        if plain and (now - last_plain >= PLAIN_LOG_EVERY_S or step == loop.max_steps):
                            last_plain = now
                            print(f"train: step {step}/{loop.max_steps} loss {loss:.5g} lr {lr:.3g} "
                                  f"{wps:.1f} windows/s elapsed {now - t_start:.0f} s", file=sys.stderr,
                                  flush=True)
                    if step % loop.eval_every == 0 or step == loop.max_steps:
                        val = self.validate()
                        if val:
                            self.log.log({"step": step, "epoch": p["epoch"], "split": "val", **val,
                                          "elapsed_s": time.perf_counter() - t_start})
                            improved = val["loss"] < p["best_val"]
                            if improved:
                                p["best_val"], p["best_step"] = val["loss"], step
                                self.save("best.pt")
                            if plain:
                                hidden = (f", hidden {val['loss_hidden']:.5g}"
                                          if "loss_hidden" in val else "")
                                print(f"train: step {step} validation loss: observed "
                                      f"{val['loss']:.5g}{hidden}"
                                      f"{'; new best, saved best.pt' if improved else ''}",
                                      file=sys.stderr, flush=True)
                    if step % loop.checkpoint_every == 0 or step == loop.max_steps:
                        self.save("last.pt")
                        saved_at = self._saved_step = step
                    if ddp.any_flag(self._stop_signal is not None, self.device):
                        if saved_at != step:
                            self.save("last.pt")
                            self._saved_step = step
                        status = "interrupted"
                        break
                    if step >= loop.max_steps:
                        break
                else:
                    p["epoch"] += 1
                    p["batch_in_epoch"] = 0
                    continue
                epoch_data.close()  # stops the prefetching threads before what follows
                if p["batch_in_epoch"] >= len(batches):  # ended exactly on an epoch boundary
                    p["epoch"] += 1
                    p["batch_in_epoch"] = 0
        finally:
            if epoch_data is not None:
                epoch_data.close()
            bar.close()
            self.log.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if p["best_step"] < 0 and self.dist.is_main and status == "finished":
            # no validation split: the final weights are the selected ones
            save_checkpoint(self.run_dir / "best.pt", self.state())
        ddp.barrier()
        # Release the DDP wrapper: its reducer holds the process group, which would otherwise live on
        # (the trainer's reference cycles keep it) until interpreter exit, after destroy_process_group,
        # where tearing down gloo's threads occasionally aborts a rank (SIGABRT after "finished").
        self.model = self.raw_model
        return TrainResult(status, p["step"], p["best_val"], p["best_step"], self.run_dir)
