"""Train one model on one synthetic task and print (or append) its test accuracy.

Examples (from the repository root):
    python -m benchmarks.synthetic.run --task s5 --model bdlru --block-size 4 --epochs 200   # the paper's budget
    python -m benchmarks.synthetic.run --task s5 --model bdlru --block-size 4 --epochs 200 --seeds 0 1 2
    python -m benchmarks.synthetic.run --task compression --model hlru --order 2 --seed 1
    python -m benchmarks.synthetic.run --task s3 --model bdlru --smoke          # CPU, about a minute

Recipe (the paper's: MAD's train.py defaults): AdamW lr 5e-4, cosine schedule down to 1e-6, no weight decay,
batch 128, bf16 autocast on GPU; loss = cross-entropy on the training targets. Ours on top: a 5% linear
warm-up and gradient clipping at norm 1. Batches are successive random permutations of the training set,
laid end to end and cut into batches (a batch may span two epochs, so that every batch has the same shape):
``--epochs E`` is ceil(E * num_train / batch) steps and shows every example E times. The paper trains
200 epochs (S5: 156,250 steps); every record gives ``paper_steps`` (200 epochs) to compare with.

Stopping: at ``--steps`` (or the steps of ``--epochs``) or after the time budget, whichever comes first:
the budget is ``--max-time`` seconds, or less if the run must end by the wall-clock time ``end_by`` (set
by the suite's deadline), and the schedule follows progress = max(step / steps, elapsed / budget), so a
time-capped run still anneals.
A run also stops once every training batch has been predicted exactly for ``patience`` consecutive
steps: the streak is counted on the device at every step and read by the host every ``check_every``
steps without waiting for it (no per-step host synchronisation). The first ``compile_steps`` steps
(kernel compilation and autotuning) are not counted in ``--max-time``; their time is ``first_step_s``.

CUDA graphs (``--cuda-graph``; the default on CUDA for the H-LRU / BD-LRU models, refused on a CPU): after
the compile steps and ``eager_probe_steps`` timed eager steps on the run's own stream, one whole training
step (forward, backward, clipping, fused AdamW with the learning rate in a device tensor) is captured in
a ``torch.cuda.CUDAGraph`` and replayed; a step then costs a learning-rate fill, one gather of the batch
into the static buffer (indices from the device-resident permutation) and one graph launch. A capture
that fails raises an error naming the model. :func:`train_concurrently` trains several runs from one
process, each on its own stream, stepping them in turn so that their graphs overlap on the GPU. Records
give ``steps_per_s`` (the timed part of the run), ``eager_steps_per_s`` (the timed eager steps) and, with
graphs, ``graph_steps_per_s`` (timed replays with the GPU to itself) and ``concurrent_runs``.

Test metrics over the target positions of the held-out test set, at the end: per-token ``accuracy`` and
``macro_accuracy`` (the paper's metric, torchmetrics' MulticlassAccuracy with average="macro"; see
``tasks.macro_accuracy``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from typing import Callable, Optional

import torch

from benchmarks.synthetic.baselines import (
    LRNN_KINDS,
    BaselineUnavailable,
    ProbeHead,
    build_model,
    count_parameters,
    last_hidden_state,
)
from benchmarks.synthetic.tasks import class_counts, macro_accuracy, make_task, masked_cross_entropy, target_mask
from hf_lrnn.modeling_lrnn import check_token_ids

PAPER_EPOCHS = 200  # the paper's (MAD's) training budget in epochs
GRAPH_KINDS = LRNN_KINDS  # model kinds whose training step is captured by default on CUDA
SMOKE = dict(task_overrides={"seq_len": 8, "num_train": 4000, "num_test": 256}, hidden_size=32, steps=600,
             batch_size=64, lr=3e-3, check_every=10)


def default_run(**kw) -> dict:
    """A run's settings: the paper's recipe, updated by ``kw``; with ``smoke=True`` the SMOKE sizes then
    replace those settings (task overrides in ``kw`` still win over SMOKE's)."""
    run = dict(task="s5", model="bdlru", order=2, block_size=4, recurrent_size=None, hidden_size=128, num_layers=2,
               seed=0, steps=20000, epochs=None, max_time=None, end_by=None, batch_size=128, lr=5e-4, min_lr=1e-6,
               warmup=0.05, weight_decay=0.0, task_overrides={}, smoke=False, device=None, scan_backend="auto", patience=50,
               check_every=100, amp=True, gate_normalization="softmax", cuda_graph="auto", compile_steps=2,
               eager_probe_steps=20, graph_probe_steps=50)
    run.update(kw)
    if run["smoke"]:
        for key, value in SMOKE.items():
            if key == "task_overrides":
                run[key] = {**value, **run[key]}
            else:
                run[key] = value
    return run


def model_label(run: dict) -> str:
    """The row name of a run in the results: diag, hlru_m<m>, bdlru_k<k>, or the baseline's kind."""
    kind = run["model"]
    if kind == "hlru":
        return "diag" if run["order"] == 1 else f"hlru_m{run['order']}"
    if kind == "bdlru":
        return "diag" if run["block_size"] == 1 else f"bdlru_k{run['block_size']}"
    return kind


def learning_rate(run: dict, progress: float) -> float:
    """The schedule at ``progress`` in [0, 1]: linear warm-up from 0 to ``lr`` over the first ``warmup``
    fraction, then a cosine from ``lr`` down to ``min_lr``."""
    peak, low, warm = run["lr"], run["min_lr"], run["warmup"]
    if progress < warm:
        return peak * progress / warm
    t = min(1.0, (progress - warm) / (1 - warm)) if warm < 1 else 1.0
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * t))


def planned_steps(run: dict, num_train: int) -> int:
    """Optimizer steps of a run: those of ``epochs`` when set (ceil(epochs * num_train / batch)), else ``steps``."""
    if run["epochs"] is None:
        return run["steps"]
    return math.ceil(run["epochs"] * num_train / run["batch_size"])


def uses_cuda_graph(run: dict, device: torch.device) -> bool:
    """Whether the run's step is captured: ``cuda_graph`` True or False, or "auto" (the LRNN kinds on CUDA)."""
    choice = run["cuda_graph"]
    if choice == "auto":
        return device.type == "cuda" and run["model"] in GRAPH_KINDS
    if not isinstance(choice, bool):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {choice!r}")
    if choice and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; this run is on {device}")
    return choice


class EpochSampler:
    """Training indices in batches: one random permutation of range(n) per epoch, laid end to end and cut into
    batches of ``batch_size`` (a batch may span two epochs). Drawn on the CPU from ``seed`` (the same order on
    every device) and moved to ``device`` one epoch at a time; :meth:`next` returns a view or, at an epoch
    boundary, a concatenation, on ``device``."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.cursor = self._permutation(), 0

    def _permutation(self) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=self.generator)
        if self.device.type == "cuda":
            return perm.pin_memory().to(self.device, non_blocking=True)
        return perm

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.cursor == self.n:
                self.order, self.cursor = self._permutation(), 0
            take = min(need, self.n - self.cursor)
            parts.append(self.order[self.cursor:self.cursor + take])
            self.cursor += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class GraphCaptureError(RuntimeError):
    """The training step of a run could not be captured in a CUDA graph (the message says why)."""


class Trainer:
    """One run: its data on the device, model, optimizer, a static batch buffer and the training step as a
    plain function (:meth:`train_step`), which :meth:`capture` records in a CUDA graph. Use
    :meth:`prepare`, then :meth:`advance` until :meth:`stop_reason` is not None, then :meth:`finish`."""

    def __init__(self, run: dict, log: Callable = print):
        self.run, self.log = run, log
        self.t_start = time.time()
        self.device = torch.device(run["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.use_graph = uses_cuda_graph(run, self.device)
        if run["min_lr"] > run["lr"]:
            raise ValueError(f"min_lr={run['min_lr']} is above lr={run['lr']}")
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.use_amp = cuda and run["amp"]
        self.graph = None
        self.step, self.t_train, self.time_budget, self.first_step_s = 0, None, None, None
        self.paused_s = 0.0  # time spent setting up or evaluating other runs of the same process (not ours)
        self.eager_steps_per_s = self.graph_steps_per_s = None
        self.loss_value, self.solved, self.concurrent_runs, self._last_log = float("nan"), False, 1, 0
        with self.on_stream():
            self._build()

    def on_stream(self):
        """A context that makes this run's CUDA stream current (nothing on the CPU)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _build(self):
        run, device = self.run, self.device
        torch.manual_seed(run["seed"])
        self.data = data = make_task(run["task"], seed=run["seed"], **run["task_overrides"])
        spec = data.spec
        for x in (data.train_inputs, data.test_inputs):
            check_token_ids(x, spec.vocab_size)
        self.model, self.desc = build_model(run["model"], spec.vocab_size, run["hidden_size"], run["num_layers"],
                                            run["order"], run["block_size"], device=device,
                                            scan_backend=run["scan_backend"],
                                            gate_normalization=run["gate_normalization"], recurrent_size=run["recurrent_size"])
        base = self.model.base_model
        if hasattr(base, "check_token_ids"):  # the ids were checked above; the per-call check reads them (a sync)
            base.check_token_ids = False
        self.probe = None
        if spec.probe:
            self.probe = ProbeHead(run["hidden_size"], data.num_targets, spec.vocab_size).to(device)
            self.parameters = (count_parameters(self.model, exclude=(self.model.get_output_embeddings(),))
                               + count_parameters(self.probe))
        else:
            self.parameters = count_parameters(self.model)
        self.params = [p for p in self.model.parameters()] + (list(self.probe.parameters()) if self.probe else [])
        # One optimizer for both modes: fused AdamW with the learning rate in a device tensor (filled each step).
        self.opt = torch.optim.AdamW(self.params, lr=torch.tensor(run["lr"], dtype=torch.float32, device=device),
                                     weight_decay=run["weight_decay"], betas=(0.9, 0.999), fused=True,
                                     capturable=device.type == "cuda")
        self.lr = self.opt.param_groups[0]["lr"]
        self.steps = planned_steps(run, spec.num_train)
        if self.steps < 1:
            raise ValueError(f"a run needs at least one step, got steps={self.steps}")
        n_in = data.train_inputs.shape[1]
        self.train_xy = torch.cat([data.train_inputs, data.train_targets], 1).to(device)
        self.test_x, self.test_y = data.test_inputs.to(device), data.test_targets.to(device)
        self.batch = torch.empty(run["batch_size"], self.train_xy.shape[1], dtype=torch.long, device=device)
        self.x, self.y = self.batch[:, :n_in], self.batch[:, n_in:]
        self.sampler = EpochSampler(spec.num_train, run["batch_size"], run["seed"] + 12345, device)
        self.loss = torch.zeros((), device=device)
        self.streak = torch.zeros((), dtype=torch.int32, device=device)
        self._host_stats = torch.zeros(2, pin_memory=device.type == "cuda")
        self._pending = None  # a CUDA event (or True on the CPU) while a read of the stats is in flight

    # ------------------------------------------------------------------------------------------- one step
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T', V) for inputs x (B, T): the LM head's, or the probe's from the last hidden state."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            if self.probe is not None:
                return self.probe(last_hidden_state(self.model, x)[:, -1])
            return self.model(input_ids=x).logits

    def train_step(self):
        """One optimizer step on the batch in the static buffer, plain PyTorch without host synchronisation (what
        the CUDA graph captures): forward, masked cross-entropy, backward, clipping, AdamW; the loss and the
        streak of perfectly predicted batches are kept on the device."""
        self.opt.zero_grad(set_to_none=True)
        logits = self.predict(self.x)
        loss = masked_cross_entropy(logits, self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            perfect = ((logits.argmax(-1) == self.y) | ~target_mask(self.y)).all()
            self.streak.add_(1).mul_(perfect)
            self.loss.copy_(loss.detach())

    def capture(self):
        """Record :meth:`train_step` in a CUDA graph on this run's stream. Called after steps on the same stream
        (kernels compiled and autotuned, optimizer state allocated); the capture itself takes no step."""
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.train_step()
        except Exception as err:
            self.graph = None
            raise GraphCaptureError(f"CUDA graph capture of the {model_label(self.run)} training step failed "
                               f"({type(err).__name__}: {err}); run it with cuda_graph=False") from err

    def train_time(self) -> float:
        """Seconds of training so far: since the compile steps, less the time paused for other runs."""
        return time.time() - self.t_train - self.paused_s

    def progress(self) -> float:
        p = self.step / self.steps
        if self.time_budget is not None:
            p = max(p, self.train_time() / max(self.time_budget, 1e-9))
        return p

    def advance(self):
        """One training step: the scheduled learning rate, the next batch into the static buffer, then the graph
        replay (or :meth:`train_step`); every ``check_every`` steps an asynchronous read of the loss and streak."""
        with self.on_stream():
            self.lr.fill_(learning_rate(self.run, min(1.0, self.progress())))
            torch.index_select(self.train_xy, 0, self.sampler.next(), out=self.batch)
            if self.graph is not None:
                self.graph.replay()
            else:
                self.train_step()
            self.step += 1
            if self.step % self.run["check_every"] == 0 and self._pending is None:
                self._host_stats.copy_(torch.stack([self.loss.float(), self.streak.float()]), non_blocking=True)
                if self.stream is not None:
                    self._pending = torch.cuda.Event()
                    self._pending.record(self.stream)
                else:
                    self._pending = True
        self._poll()

    def _poll(self):
        if self._pending is None or (self._pending is not True and not self._pending.query()):
            return
        self._pending = None
        self.loss_value, streak = self._host_stats.tolist()
        self.solved = streak >= self.run["patience"]
        if self.step - self._last_log >= 2000:
            self._last_log = self.step
            elapsed = self.train_time() if self.t_train else 0.0
            self.log(f"  [{self.run['task']}/{model_label(self.run)}/s{self.run['seed']}] step {self.step} "
                     f"loss {self.loss_value:.4f} elapsed {elapsed:.0f}s")

    def stop_reason(self) -> Optional[str]:
        """Why the run stops now ("solved", "steps", "time"), or None to go on."""
        if self.solved:
            return "solved"
        if self.step >= self.steps:
            return "steps"
        if self.time_budget is not None and self.train_time() >= self.time_budget:
            return "time"
        if self.run["end_by"] is not None and time.time() >= self.run["end_by"]:
            return "time"
        return None

    def sync(self):
        if self.stream is not None:
            self.stream.synchronize()

    def _timed_steps(self, n: int) -> Optional[float]:
        """Run n steps with the device to this run alone; their steps/s (None for n = 0)."""
        if n <= 0:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.time()
        for _ in range(n):
            self.advance()
        self.sync()
        return n / max(time.time() - t, 1e-9)

    def prepare(self):
        """The compile steps (outside the time budget), the timed eager steps and, in graph mode, the capture and
        the timed replays. All of these are training steps of the run."""
        t0 = time.time()
        for _ in range(min(self.run["compile_steps"], self.steps)):
            self.advance()
        self.sync()
        self.first_step_s = time.time() - t0
        self.t_train = time.time()
        budgets = [b for b in (self.run["max_time"], self.run["end_by"] and self.run["end_by"] - self.t_train)
                   if b is not None]
        self.time_budget = min(budgets) if budgets else None
        self.eager_steps_per_s = self._timed_steps(min(self.run["eager_probe_steps"], self.steps - self.step))
        if self.use_graph and self.step < self.steps:
            self.capture()
            self.graph_steps_per_s = self._timed_steps(min(self.run["graph_probe_steps"], self.steps - self.step))

    # ------------------------------------------------------------------------------------------ the end
    def evaluate(self) -> dict:
        """Per-token, macro and last-position accuracy over the target positions of the test set."""
        spec = self.data.spec
        self.model.eval()
        num_classes = spec.vocab_size
        counts = torch.zeros(3, num_classes, dtype=torch.long, device=self.device)
        last_correct = torch.zeros((), dtype=torch.long, device=self.device)
        with self.on_stream(), torch.no_grad():
            for i in range(0, self.test_x.shape[0], 512):
                logits, tgt = self.predict(self.test_x[i:i + 512]), self.test_y[i:i + 512]
                counts += class_counts(logits, tgt, num_classes)
                if not spec.probe:  # accuracy at the last target position of each sequence
                    last = target_mask(tgt).cumsum(1).argmax(1, keepdim=True)
                    last_correct += (logits.argmax(-1).gather(1, last) == tgt.gather(1, last)).sum()
            counts, last_correct = counts.cpu(), int(last_correct)
        return {"accuracy": int(counts[0].sum()) / int(counts[1].sum()), "macro_accuracy": macro_accuracy(counts),
                "last_position_accuracy": None if spec.probe else last_correct / self.test_x.shape[0]}

    def finish(self, stopped: str) -> dict:
        """Wait for the run's work, evaluate, and return its record."""
        self.sync()
        train_time = self.train_time()
        metrics = self.evaluate()
        spec, run = self.data.spec, self.run
        with self.on_stream():
            self.loss_value = float(self.loss)
        timed_steps = self.step - min(run["compile_steps"], self.steps)
        return {
            "status": "ok", "task": spec.name, "model": model_label(run), "config": self.desc,
            "task_config": {"vocab_size": spec.vocab_size, "seq_len": spec.seq_len, "num_train": spec.num_train,
                            "num_test": spec.num_test, **spec.params},
            "parameters": self.parameters, "seed": run["seed"], **metrics,
            "steps": self.step, "planned_steps": self.steps, "epochs": round(self.step * run["batch_size"] / spec.num_train, 2),
            "paper_steps": math.ceil(PAPER_EPOCHS * spec.num_train / run["batch_size"]),
            "stopped": stopped, "final_train_loss": self.loss_value, "train_time_s": round(train_time, 1),
            "first_step_s": None if self.first_step_s is None else round(self.first_step_s, 1),
            "paused_s": round(self.paused_s, 1),
            "steps_per_s": round(timed_steps / train_time, 1) if train_time > 0 else None,
            "eager_steps_per_s": None if self.eager_steps_per_s is None else round(self.eager_steps_per_s, 1),
            "graph_steps_per_s": None if self.graph_steps_per_s is None else round(self.graph_steps_per_s, 1),
            "cuda_graph": self.graph is not None, "concurrent_runs": self.concurrent_runs,
            "wall_time_s": round(time.time() - self.t_start, 1), "batch_size": run["batch_size"], "lr": run["lr"],
            "min_lr": run["min_lr"], "max_time": run["max_time"],
            "time_budget_s": None if self.time_budget is None else round(self.time_budget, 1),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "bf16": self.use_amp, "smoke": run["smoke"],
        }


def train(run: dict, log=print) -> dict:
    """Train and evaluate one configuration; returns a result dict (the JSON-lines record)."""
    return fit(run, log)[2]


def fit(run: dict, log=print):
    """Train and evaluate one configuration; returns (model, task data, result dict)."""
    trainer = Trainer(run, log)
    trainer.prepare()
    while (stopped := trainer.stop_reason()) is None:
        trainer.advance()
    return trainer.model, trainer.data, trainer.finish(stopped)


def train_concurrently(next_run: Callable[[], Optional[dict]], slots: int,
                       on_result: Callable[[dict, Optional[dict], Optional[BaseException]], None], log=print) -> None:
    """Train the runs that ``next_run()`` hands out (None when there are no more) with up to ``slots`` of them
    active at once in this process, each on its own CUDA stream, one step each in turn. A new run is set up
    (and captured) as soon as a slot frees. ``on_result(run, record, error)`` gets each run's record, or the
    error that ended it (the other runs go on). While one run is set up (compiled, autotuned, captured) or
    evaluated, the others wait: that time is added to their ``paused_s`` and not counted in their budgets."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    active, more = [], True

    @contextlib.contextmanager
    def pausing_others(current=None):
        t = time.time()
        try:
            yield
        finally:
            for other in active:
                if other is not current and other.t_train is not None:
                    other.paused_s += time.time() - t

    while True:
        while more and len(active) < slots:
            run = next_run()
            if run is None:
                more = False
                break
            try:
                with pausing_others():
                    trainer = Trainer(run, log)
                    trainer.prepare()
                active.append(trainer)
            except Exception as err:  # noqa: BLE001 (a run that cannot start is reported; the others go on)
                on_result(run, None, err)
        if not active:
            return
        for trainer in list(active):
            trainer.concurrent_runs = max(trainer.concurrent_runs, len(active))
            try:
                stopped = trainer.stop_reason()
                if stopped is None:
                    trainer.advance()
                    continue
                with pausing_others(trainer):
                    record = trainer.finish(stopped)
            except Exception as err:  # noqa: BLE001
                active.remove(trainer)
                on_result(trainer.run, None, err)
                continue
            active.remove(trainer)
            on_result(trainer.run, record, None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.run",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="s5", help="selective_copy, compression, recall, s3, s4, s5, a5, parity, mod_count")
    p.add_argument("--model", default="bdlru", help="hlru, bdlru, diag, lstm, llama, mamba, mamba2, deltanet, gated_deltanet")
    p.add_argument("--order", type=int, default=2, help="H-LRU order m")
    p.add_argument("--block-size", type=int, default=4, help="BD-LRU block size k")
    p.add_argument("--recurrent-size", type=int, default=None,
                   help="recurrent width (default: the model width; BD-LRU needs a multiple of k, e.g. 130 for k = 5)")
    p.add_argument("--hidden-size", type=int, default=None, help="model width d (default 128; 32 with --smoke)")
    p.add_argument("--num-layers", type=int, default=2, help="mixer blocks (each followed by a SwiGLU block)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train these seeds concurrently in this process (one CUDA stream each) instead of --seed")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 20000; 600 with --smoke)")
    p.add_argument("--epochs", type=float, default=None,
                   help="train this many epochs instead of --steps (the paper: 200)")
    p.add_argument("--max-time", type=float, default=None, help="wall-clock training budget in seconds")
    p.add_argument("--batch-size", type=int, default=None, help="default 128; 64 with --smoke")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4; 3e-3 with --smoke)")
    p.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine (default 1e-6)")
    p.add_argument("--seq-len", type=int, default=None, help="override the task's length")
    p.add_argument("--vocab-size", type=int, default=None, help="override the task's vocabulary (recall ladder)")
    p.add_argument("--num-train", type=int, default=None)
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--cuda-graph", dest="cuda_graph", action="store_true", default=None,
                       help="capture the training step in a CUDA graph (default on CUDA for hlru/bdlru/diag)")
    graph.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", help="eager training steps")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU-sized run (length 8, 4,000 training sequences, d=32, 600 steps) unless set otherwise")
    p.add_argument("--device", default=None)
    p.add_argument("--scan-backend", default="auto")
    p.add_argument("--out", default=None, help="append each result as one JSON line to this file")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    overrides = {k: v for k, v in {"seq_len": a.seq_len, "num_train": a.num_train, "vocab_size": a.vocab_size}.items()
                 if v is not None}
    given = {k: v for k, v in {"hidden_size": a.hidden_size, "steps": a.steps, "batch_size": a.batch_size,
                               "lr": a.lr, "min_lr": a.min_lr}.items() if v is not None}
    run = default_run(task=a.task, model=a.model, order=a.order, block_size=a.block_size,
                      recurrent_size=a.recurrent_size, num_layers=a.num_layers, seed=a.seed, epochs=a.epochs,
                      max_time=a.max_time, task_overrides=overrides, smoke=a.smoke, device=a.device,
                      scan_backend=a.scan_backend, cuda_graph="auto" if a.cuda_graph is None else a.cuda_graph)
    run.update(given)  # what the command line sets wins over --smoke's sizes
    runs = [dict(run, seed=s) for s in a.seeds] if a.seeds else [run]
    failures = []

    def emit(spec, record, error):
        if error is not None:
            failures.append(error)
            print(f"not run (seed {spec['seed']}): {type(error).__name__}: {error}")
            return
        line = json.dumps(record)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")

    pending = iter(runs)
    train_concurrently(lambda: next(pending, None), len(runs), emit)
    if failures and all(isinstance(e, BaselineUnavailable) for e in failures):
        return 2
    if failures:
        raise failures[0]
    return 0


if __name__ == "__main__":
    sys.exit(main())
