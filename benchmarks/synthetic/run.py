"""Train one model on one synthetic task, evaluate it at several lengths, and print (or append) its record.

    python -m benchmarks.synthetic.run --task s5 --model bdlru_k5 --steps 100000 --seeds 0 1 2 --lengths 16 32 64 128 256
    python -m benchmarks.synthetic.run --task s3 --model bdlru_k4 --smoke          # CPU, seconds

Recipes (:data:`RECIPES`; AdamW betas 0.9 / 0.999, no weight decay, lr 5e-4, batch 128, bf16 autocast on GPU):
``authors`` (MAD's: no warm-up or clipping, cosine to 1e-6 stepped once per epoch) and ``project`` (5 % warm-up,
clipping at 1, cosine stepped every step). The step budget is honoured exactly; batches are successive random
permutations of the training set. After every epoch the test loss picks a device copy of the best weights; at the
end the final (``final``) and best-epoch (``best_epoch``) weights are evaluated at every ``--lengths`` length. On
CUDA one training step is captured in a CUDA graph after ``compile_steps`` eager steps; :func:`train_concurrently`
steps several runs in turn, each on its own stream. Record fields: benchmarks/README.md."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import torch

from benchmarks.models import display_name
from benchmarks.synthetic.baselines import BaselineUnavailable, ProbeHead, build_model, count_parameters, last_hidden_state
from benchmarks.synthetic.tasks import class_counts, macro_accuracy, make_task, masked_cross_entropy, target_mask

ROOT = Path(__file__).resolve().parents[2]
PAPER_EPOCHS = 200  # the paper's (MAD's) training budget in epochs
RECIPES = {"authors": dict(warmup=0.0, clip=None, schedule="epoch"),
           "project": dict(warmup=0.05, clip=1.0, schedule="step")}
EVAL_BATCH = 512
SMOKE = dict(task_overrides={"num_train": 2000, "num_test": 128}, hidden_size=32, steps=300, batch_size=32, lr=3e-3,
             eval_num=128, train_eval_num=128)


def default_run(**kw) -> dict:
    """A run's settings: the authors' recipe, updated by ``kw``; with ``smoke=True`` the SMOKE sizes then replace
    those settings (task overrides in ``kw`` win over SMOKE's)."""
    run = dict(task="s5", model="bdlru_k4", hidden_size=128, num_layers=2, seed=0, steps=20000, epochs=None,
               recipe="authors", batch_size=128, lr=5e-4, min_lr=1e-6, weight_decay=0.0, task_overrides={},
               lengths=None, eval_num=1280, train_eval_num=1280, smoke=False, device=None, scan_backend="auto",
               amp=True, gate_normalization="softmax", cuda_graph="auto", compile_steps=2, max_time=None,
               log_every=10000)
    run.update(kw)
    if run["smoke"]:
        for key, value in SMOKE.items():
            run[key] = {**value, **run[key]} if key == "task_overrides" else value
    if run["recipe"] not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {run['recipe']!r}")
    return run


def learning_rate(run: dict, step: int, steps: int, steps_per_epoch: float) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps`` under the run's recipe (module docstring)."""
    peak, low, recipe = run["lr"], run["min_lr"], RECIPES[run["recipe"]]
    if recipe["schedule"] == "epoch":
        epochs = math.ceil(steps / steps_per_epoch)
        t = min(int(step / steps_per_epoch), epochs - 1) / epochs
    else:
        progress, warm = step / steps, recipe["warmup"]
        if progress < warm:
            return peak * progress / warm
        t = (progress - warm) / (1 - warm)
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def planned_steps(run: dict, num_train: int) -> int:
    """Optimizer steps of a run: those of ``epochs`` when set (ceil(epochs * num_train / batch)), else ``steps``."""
    if run["epochs"] is None:
        return run["steps"]
    return math.ceil(run["epochs"] * num_train / run["batch_size"])


def check_token_range(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    """ValueError unless every id of ``ids`` lies in [0, vocab_size)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{what}: token ids must lie in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")


class EpochSampler:
    """Training indices in batches: one random permutation of range(n) per epoch, laid end to end and cut into
    batches of ``batch_size``. Drawn on the CPU from ``seed`` (the same order on every device)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.cursor = self.permutation(), 0

    def permutation(self) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=self.generator)
        return perm.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else perm

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.cursor == self.n:
                self.order, self.cursor = self.permutation(), 0
            take = min(need, self.n - self.cursor)
            parts.append(self.order[self.cursor:self.cursor + take])
            self.cursor += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class GraphCaptureError(RuntimeError):
    """The training step of a run could not be captured in a CUDA graph (the message says why)."""


class SyntheticRun:
    """One run: data on the device, model, optimizer, a static batch buffer, the training step as a plain function
    (:meth:`train_step`, which :meth:`capture` records in a CUDA graph) and the best-epoch copy of the weights.
    Use :meth:`prepare`, then :meth:`advance` until :meth:`stop_reason` is not None, then :meth:`finish`."""

    def __init__(self, run: dict, log: Callable = print):
        self.run, self.log, self.t_start = run, log, time.time()
        self.device = torch.device(run["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        if run["cuda_graph"] not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be True, False or 'auto', got {run['cuda_graph']!r}")
        if run["cuda_graph"] is True and not cuda:
            raise ValueError(f"cuda_graph=True needs a CUDA device; this run is on {self.device}")
        if run["min_lr"] > run["lr"]:
            raise ValueError(f"min_lr={run['min_lr']} is above lr={run['lr']}")
        self.use_graph = cuda and run["cuda_graph"] in ("auto", True)
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.use_amp = cuda and run["amp"]
        self.graph, self.step, self.t_train, self.first_step_s = None, 0, None, None
        self.paused_s, self.concurrent_runs = 0.0, 1  # paused: time spent on other runs of the same process
        with self.on_stream():
            self.build()

    def on_stream(self):
        """A context that makes this run's CUDA stream current (nothing on the CPU)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def build(self):
        run, device = self.run, self.device
        torch.manual_seed(run["seed"])
        self.data = data = make_task(run["task"], seed=run["seed"], **run["task_overrides"])
        spec = data.spec
        for name in ("train_inputs", "test_inputs"):
            check_token_range(getattr(data, name), spec.vocab_size, f"{spec.name} {name}")
        if spec.probe and set(run["lengths"] or ()) - {spec.seq_len}:
            raise ValueError(f"lengths={run['lengths']}: {spec.name} decodes a fixed number of tokens with a probe; "
                             f"it is evaluated at its training length {spec.seq_len} only")
        self.model, self.desc = build_model(run["model"], spec.vocab_size, run["hidden_size"], run["num_layers"],
                                            device=device, scan_backend=run["scan_backend"],
                                            gate_normalization=run["gate_normalization"])
        self.probe = ProbeHead(run["hidden_size"], data.num_targets, spec.vocab_size).to(device) if spec.probe else None
        self.params = list(self.model.parameters()) + (list(self.probe.parameters()) if self.probe else [])
        self.parameters = (count_parameters(self.model, exclude=(self.model.get_output_embeddings(),))
                           + count_parameters(self.probe)) if self.probe else count_parameters(self.model)
        self.opt = torch.optim.AdamW(self.params, lr=torch.tensor(run["lr"], dtype=torch.float32, device=device),
                                     weight_decay=run["weight_decay"], betas=(0.9, 0.999), fused=True,
                                     capturable=device.type == "cuda")
        self.lr = self.opt.param_groups[0]["lr"]
        self.steps = planned_steps(run, spec.num_train)
        if self.steps < 1:
            raise ValueError(f"a run needs at least one step, got steps={self.steps}")
        self.steps_per_epoch = spec.num_train / run["batch_size"]
        n_in = data.train_inputs.shape[1]
        self.train_xy = torch.cat([data.train_inputs, data.train_targets], 1).to(device)
        self.test_x, self.test_y = data.test_inputs.to(device), data.test_targets.to(device)
        self.batch = torch.empty(run["batch_size"], self.train_xy.shape[1], dtype=torch.long, device=device)
        self.x, self.y = self.batch[:, :n_in], self.batch[:, n_in:]
        self.sampler = EpochSampler(spec.num_train, run["batch_size"], run["seed"] + 12345, device)
        self.loss = torch.zeros((), device=device)
        self.best = [p.detach().clone() for p in self.params]
        self.best_loss = torch.full((), math.inf, device=device)
        self.best_step = torch.zeros((), dtype=torch.long, device=device)
        self.epoch_log = []  # (step, test loss, test accuracy) at each epoch's end, device scalars until finish

    # ------------------------------------------------------------------------------------------- training
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T', V) for inputs x (B, T): the LM head's, or the probe's from the last hidden state."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            if self.probe is not None:
                return self.probe(last_hidden_state(self.model, x)[:, -1])
            return self.model(inputs_embeds=self.model.get_input_embeddings()(x)).logits

    def train_step(self):
        """One optimizer step on the batch in the static buffer, without host synchronisation (what the CUDA graph
        captures): forward, masked cross-entropy, backward, clipping (project recipe), AdamW."""
        self.opt.zero_grad(set_to_none=True)
        loss = masked_cross_entropy(self.predict(self.x), self.y)
        loss.backward()
        if RECIPES[self.run["recipe"]]["clip"] is not None:
            torch.nn.utils.clip_grad_norm_(self.params, RECIPES[self.run["recipe"]]["clip"])
        self.opt.step()
        self.loss.copy_(loss.detach())

    def capture(self):
        """Record :meth:`train_step` in a CUDA graph on this run's stream (after steps on the same stream)."""
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.train_step()
        except Exception as err:
            self.graph = None
            raise GraphCaptureError(f"CUDA graph capture of the {self.run['model']} training step failed "
                                    f"({type(err).__name__}: {err}); run it with cuda_graph=False") from err

    def replay_step(self):
        (self.graph.replay if self.graph is not None else self.train_step)()

    def advance(self):
        """One training step (scheduled learning rate, next batch into the static buffer, the step); at an epoch's
        end the test loss and, if lower than before, a device copy of the weights."""
        with self.on_stream():
            self.lr.fill_(learning_rate(self.run, self.step, self.steps, self.steps_per_epoch))
            torch.index_select(self.train_xy, 0, self.sampler.next(), out=self.batch)
            self.replay_step()
            self.step += 1
            if int(self.step / self.steps_per_epoch) > int((self.step - 1) / self.steps_per_epoch) or self.step == self.steps:
                self.keep_if_best()
        if self.step % self.run["log_every"] == 0:
            self.log(f"  [{self.run['task']}/{self.run['model']}/s{self.run['seed']}] step {self.step}/{self.steps}")

    @torch.no_grad()
    def keep_if_best(self):
        loss, accuracy = self.evaluate(self.test_x, self.test_y, summary=False)
        self.epoch_log.append((self.step, loss, accuracy))
        better = loss < self.best_loss
        for p, b in zip(self.params, self.best):
            b.copy_(torch.where(better, p, b))
        self.best_loss.copy_(torch.where(better, loss, self.best_loss))
        self.best_step.masked_fill_(better, self.step)

    def stop_reason(self) -> Optional[str]:
        """Why the run stops now ("steps", or "time" past ``max_time``), or None to go on."""
        if self.step >= self.steps:
            return "steps"
        if self.run["max_time"] is not None and self.t_train is not None and self.train_time() >= self.run["max_time"]:
            return "time"
        return None

    def train_time(self) -> float:
        """Seconds of training since the compile steps, less the time paused for other runs."""
        return time.time() - self.t_train - self.paused_s

    def sync(self):
        if self.stream is not None:
            self.stream.synchronize()

    def prepare(self):
        """The compile steps (eager; their time is ``first_step_s``), then, in graph mode, the capture."""
        t0 = time.time()
        for _ in range(min(self.run["compile_steps"], self.steps)):
            self.advance()
        self.sync()
        self.first_step_s, self.t_train = time.time() - t0, time.time()
        if self.use_graph and self.step < self.steps:
            self.capture()

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor, summary: bool = True):
        """Loss, accuracy, macro accuracy and per-position accuracy over the target positions of (inputs, targets),
        in batches of EVAL_BATCH; with ``summary=False`` only the loss and the accuracy, as device scalars (no
        synchronisation)."""
        num_classes = self.data.spec.vocab_size
        counts = torch.zeros(3, num_classes, dtype=torch.long, device=self.device)
        correct = torch.zeros(targets.shape[1], dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        with self.on_stream():
            self.model.eval()
            for i in range(0, inputs.shape[0], EVAL_BATCH):
                logits, tgt = self.predict(inputs[i:i + EVAL_BATCH]), targets[i:i + EVAL_BATCH]
                mask = target_mask(tgt)
                loss_sum += masked_cross_entropy(logits, tgt) * mask.sum()
                hits += ((logits.argmax(-1) == tgt) & mask).sum()
                if summary:
                    counts += class_counts(logits, tgt, num_classes)
                    correct += ((logits.argmax(-1) == tgt) & mask).sum(0)
            self.model.train()
            loss = loss_sum / target_mask(targets).sum()
            if not summary:
                return loss, hits / target_mask(targets).sum()
            support = target_mask(targets).sum(0).clamp(min=1)
            per_position = (correct / support).tolist()
            counts = counts.cpu()
        return {"loss": round(float(loss), 5), "accuracy": round(int(counts[0].sum()) / int(counts[1].sum()), 5),
                "macro_accuracy": round(macro_accuracy(counts), 5),
                "macro_accuracy_target_classes": round(macro_accuracy(counts, classes="target"), 5),
                "per_position": [round(a, 4) for a in per_position]}

    def length_sets(self):
        """{length: (inputs, targets)} on the device: the test set at the training length, fresh sequences of the
        same generator (test split of a new seed) at the other ``lengths``."""
        spec, run = self.data.spec, self.run
        sets = {spec.seq_len: (self.test_x, self.test_y)}
        for length in run["lengths"] or ():
            if length not in sets:
                fresh = make_task(run["task"], seed=run["seed"] + 1_000_003 * length,
                                  **{**run["task_overrides"], "seq_len": length, "num_train": 0, "num_test": run["eval_num"]})
                check_token_range(fresh.test_inputs, spec.vocab_size, f"{spec.name} length {length} test inputs")
                sets[length] = (fresh.test_inputs.to(self.device), fresh.test_targets.to(self.device))
        return dict(sorted(sets.items()))

    @torch.no_grad()
    def swap_weights(self, weights):
        """Copy ``weights`` into the parameters; returns the weights they held."""
        held = [p.detach().clone() for p in self.params]
        for p, w in zip(self.params, weights):
            p.copy_(w)
        return held

    def step_check(self) -> dict:
        """The training step's loss (the CUDA graph's when captured) on the first training batch, beside the
        evaluation forward's loss on the same batch; the weights are restored after the step."""
        with self.on_stream():
            self.batch.copy_(self.train_xy[:self.run["batch_size"]])
            final = [p.detach().clone() for p in self.params]
            self.replay_step()
            step_loss = float(self.loss)
            self.swap_weights(final)
        eval_loss = self.evaluate(self.x, self.y)["loss"]
        return {"train_step_loss": round(step_loss, 5), "eval_loss": eval_loss, "cuda_graph": self.graph is not None,
                "batch": f"the first {self.run['batch_size']} training sequences"}

    def finish(self, stopped: str) -> dict:
        """Wait for the run's work, evaluate final and best-epoch weights at every length, return the record."""
        self.sync()
        train_time = self.train_time()
        spec, run = self.data.spec, self.run
        with self.on_stream():
            final_train_loss = float(self.loss)
            best_step, best_loss = int(self.best_step), float(self.best_loss)
            epoch_values = torch.stack([torch.stack(v) for _, *v in self.epoch_log]).tolist() if self.epoch_log else []
        sets = self.length_sets()
        final = {str(n): self.evaluate(x, y) for n, (x, y) in sets.items()}
        n_train = min(run["train_eval_num"], spec.num_train)
        train_eval = self.evaluate(self.train_xy[:n_train, :self.x.shape[1]], self.train_xy[:n_train, self.x.shape[1]:])
        check = self.step_check()
        final_weights = self.swap_weights(self.best)
        best = {str(n): self.evaluate(x, y) for n, (x, y) in sets.items()}
        self.swap_weights(final_weights)
        timed_steps = self.step - min(run["compile_steps"], self.steps)
        return {
            "status": "ok", "job": job_fields(run), "task": spec.name, "model": run["model"], "model_name": display_name(run["model"], run["hidden_size"]),
            "config": self.desc, "parameters": self.parameters, "seed": run["seed"], "recipe": run["recipe"],
            "recipe_settings": {**RECIPES[run["recipe"]], "lr": run["lr"], "min_lr": run["min_lr"],
                                "weight_decay": run["weight_decay"], "batch_size": run["batch_size"], "betas": [0.9, 0.999]},
            "task_config": {"vocab_size": spec.vocab_size, "seq_len": spec.seq_len, "num_train": spec.num_train,
                            "num_test": spec.num_test, **spec.params},
            "steps": self.step, "planned_steps": self.steps, "stopped": stopped,
            "epochs": round(self.step / self.steps_per_epoch, 2),
            "paper_steps": math.ceil(PAPER_EPOCHS * self.steps_per_epoch),
            "final": final,
            "best_epoch": {"step": best_step, "epoch": round(best_step / self.steps_per_epoch, 2),
                           "test_loss": round(best_loss, 5), "lengths": best},
            "epoch_log": [{"step": step, "test_loss": round(loss, 5), "accuracy": round(accuracy, 5)}
                          for (step, _, _), (loss, accuracy) in zip(self.epoch_log, epoch_values)],
            "train_eval": {"num_sequences": n_train, **train_eval}, "step_check": check,
            "final_train_loss": round(final_train_loss, 5), "seconds": round(train_time, 1),
            "steps_per_s": round(timed_steps / train_time, 1) if train_time > 0 else None,
            "first_step_s": round(self.first_step_s, 1), "paused_s": round(self.paused_s, 1),
            "wall_time_s": round(time.time() - self.t_start, 1), "cuda_graph": self.graph is not None,
            "concurrent_runs": self.concurrent_runs, "bf16": self.use_amp, "smoke": run["smoke"],
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
        }


def job_fields(run: dict) -> dict:
    """The settings that identify a run's cell and seed: task and its overrides, model, width, seed, steps, recipe."""
    return {key: run[key] for key in ("task", "task_overrides", "model", "hidden_size", "seed", "steps", "recipe")}


def environment() -> dict:
    """What produced a record: commit and dirty tree, package versions, GPU, command line and date. BENCH_COMMIT
    (and BENCH_DIRTY, "yes"/"no") win over git where set: a tree copied to a GPU machine may carry a stale .git."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    if os.environ.get("BENCH_COMMIT"):
        commit, status = os.environ["BENCH_COMMIT"], os.environ.get("BENCH_DIRTY")
    else:
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else status not in ("", "0", "no", "false"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            **{name: version(name) for name in ("torch", "triton", "transformers", "flash-linear-attention", "mamba-ssm")},
            "command": " ".join(sys.orig_argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def fit(run: dict, log=print):
    """Train and evaluate one configuration; returns (model with the final weights, task data, record)."""
    job = SyntheticRun(run, log)
    job.prepare()
    while (stopped := job.stop_reason()) is None:
        job.advance()
    return job.model, job.data, job.finish(stopped)


def train_concurrently(next_run: Callable[[], Optional[dict]], slots: int,
                       on_result: Callable[[dict, Optional[dict], Optional[BaseException]], None], log=print) -> None:
    """Train the runs that ``next_run()`` hands out (None when it has none now; asked again whenever a slot is
    free, so a run it gets later, e.g. a retry, still runs) with up to ``slots`` of them active at once in this process, each on its own CUDA stream, one step each in turn. A new run is set up (and
    captured) as soon as a slot frees. ``on_result(run, record, error)`` gets each run's record, or the error that
    ended it (the others go on). Set-up and evaluation time of one run is added to the others' ``paused_s``."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    active = []

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
        while len(active) < slots and (run := next_run()) is not None:
            try:
                with pausing_others():
                    job = SyntheticRun(run, log)
                    job.prepare()
                active.append(job)
            except Exception as err:  # noqa: BLE001 (a run that cannot start is reported; the others go on)
                on_result(run, None, err)
        if not active:
            return
        for job in list(active):
            job.concurrent_runs = max(job.concurrent_runs, len(active))
            try:
                stopped = job.stop_reason()
                if stopped is None:
                    job.advance()
                    continue
                with pausing_others(job):
                    record = job.finish(stopped)
            except Exception as err:  # noqa: BLE001
                active.remove(job)
                on_result(job.run, None, err)
                continue
            active.remove(job)
            on_result(job.run, record, None)


def append_record(path: Optional[str], record: dict) -> None:
    """Append ``record`` as one JSON line to ``path``, or print it where no path is given."""
    if path is None:
        print(json.dumps(record), flush=True)
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="s5", help="selective_copy, compression, recall, s3, s4, s5, a5, parity, mod_count")
    p.add_argument("--model", default="bdlru_k4", help="a label of benchmarks.models.MODELS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="trained concurrently, one CUDA stream each")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 20000; 300 with --smoke)")
    p.add_argument("--epochs", type=float, default=None, help="train this many epochs instead (the paper: 200)")
    p.add_argument("--recipe", default="authors", choices=list(RECIPES))
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="evaluation lengths (default: the training length)")
    p.add_argument("--hidden-size", type=int, default=None, help="model width d (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4; 3e-3 with --smoke)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_const", const=False, default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized run (d=32, 2,000 training sequences, 300 steps)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="append each record as one JSON line to this file")
    a = p.parse_args(argv)
    given = {k: v for k, v in {"hidden_size": a.hidden_size, "steps": a.steps, "lr": a.lr}.items() if v is not None}
    run = default_run(task=a.task, model=a.model, epochs=a.epochs, recipe=a.recipe, lengths=a.lengths, smoke=a.smoke,
                      device=a.device, cuda_graph=a.cuda_graph)
    run.update(given)
    env, failures = environment(), []

    def emit(spec, record, error):
        if error is not None:
            failures.append(error)
            print(f"not run (seed {spec['seed']}): {type(error).__name__}: {error}", flush=True)
        else:
            append_record(a.out, {**record, "env": env})

    pending = iter([dict(run, seed=s) for s in a.seeds])
    train_concurrently(lambda: next(pending, None), len(a.seeds), emit)
    if failures and all(isinstance(e, BaselineUnavailable) for e in failures):
        return 2
    if failures:
        raise failures[0]
    return 0


if __name__ == "__main__":
    sys.exit(main())
