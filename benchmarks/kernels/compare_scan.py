"""Side by side in one process (``python -m benchmarks.kernels.bench_scan --compare``): our Triton scans, the
authors' ``triton_affine_scan`` (IgorDn8/mad-lab, from a folder the user gives) and fla's HGRN (m = 1), on the
same inputs, forward and forward+backward, each timing repeated (min / median / max across repeats).

The authors' kernel takes ready transition matrices A (BB, T, D, D) and inputs b (BB, T, D), BB = B * N rows with
time contiguous; ours takes the gate logits. Both of theirs are timed:
- ``authors_kernel``: A and b built beforehand, untimed (their kernel alone, as in issue 22's table);
- ``authors_with_gates``: softmax of our logits, A and b built and laid out for their kernel, the kernel, and h
  taken back out, all timed (the same work ours does), the backward through all of it.
From mad-lab commit 15f7b9f on, their folder also holds ``fused_gate_scan(gates, v)`` (``triton_fused_gate_scan.py``,
block size 1 only): the gates fused into the kernel, taking logits in the (B, T, N, ...) layout as ours does, their
input gate last; ``authors_fused_gates`` times it on our H-LRU m = 1 logits, reordered beforehand (untimed).
H-LRU order m runs through the m x m companion matrix (first row a_1..a_m, ones below the diagonal) and
b = (a_0 v, 0, ..., 0); BD-LRU block k through A = a[..., 1:], b = a[..., 0] * v.
fla: ``chunk_hgrn(x, g)`` solves h_t = exp(g_t) h_{t-1} + x_t; ``fla_kernel`` on ready x and g,
``fla_with_gates`` with x = a_0 v and g = log a_1 from our logits (log_softmax) inside the timing.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional, Tuple

import torch

from hf_lrnn import scan_triton_lrnn

from .scan_setup import SCANS

AUTHORS_PACKAGE = "authors_mad_scans"  # the module name the authors' folder is imported under
AUTHORS_MODES = ("auto_v2", "auto")  # the first of these their triton_scans offers is the one timed


def load_authors_scan(path: Optional[str]) -> Tuple[Optional[Callable], str]:
    """(``triton_affine_scan`` bound to its mode, description) from ``path``, the folder holding their
    ``triton_scans.py`` and what it imports (``triton_auto_scan``, ``triton_slab_scan``, ``affine_scan``);
    (None, "not available: reason") otherwise. The folder is imported as the package ``authors_mad_scans``
    (its own relative imports resolve inside it); sys.path is left alone."""
    if not path:
        return None, "not available: no --authors-path given"
    if not os.path.isfile(os.path.join(path, "triton_scans.py")):
        return None, f"not available: {path!r} holds no triton_scans.py"
    for name in [n for n in sys.modules if n == AUTHORS_PACKAGE or n.startswith(AUTHORS_PACKAGE + ".")]:
        del sys.modules[name]  # an earlier load, possibly of another folder
    try:
        spec = importlib.machinery.ModuleSpec(AUTHORS_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [os.path.abspath(path)]
        sys.modules[AUTHORS_PACKAGE] = importlib.util.module_from_spec(spec)
        scans = importlib.import_module(f"{AUTHORS_PACKAGE}.triton_scans")
    except Exception as err:  # noqa: BLE001 - report why it could not be imported
        sys.modules.pop(AUTHORS_PACKAGE, None)
        return None, f"not available: import of {path!r} failed: {err!r}"
    # their forward modes, and the "<mode>_v2" ones (the same forward, their fused backward; mad-lab 15f7b9f on)
    modes = list(getattr(scans, "_KERNELS", {})) + list(getattr(scans, "_FUSED_BWD_MODES", {}))
    mode = next((m for m in AUTHORS_MODES if m in modes), None)
    if mode is None:
        return None, f"not available: triton_scans offers modes {modes}, none of {AUTHORS_MODES}"
    fn = scans.triton_affine_scan
    return (lambda A, b: fn(A, b, mode)), f"triton_affine_scan(mode={mode!r}) from {os.path.abspath(path)} (modes {modes})"


def load_authors_fused_gates() -> Tuple[Optional[Callable], str]:
    """(their ``fused_gate_scan``, description) from the folder ``load_authors_scan`` loaded; (None, "not available:
    reason") where it holds no ``triton_fused_gate_scan.py`` or that file fails to import."""
    name = f"{AUTHORS_PACKAGE}.triton_fused_gate_scan"
    try:
        return importlib.import_module(name).fused_gate_scan, f"fused_gate_scan from {name}"
    except ModuleNotFoundError as err:
        if err.name != name:
            return None, f"not available: import of {name} failed: {err!r}"
        return None, "not available: their folder holds no triton_fused_gate_scan.py (mad-lab before 15f7b9f)"
    except Exception as err:  # noqa: BLE001 - report why it could not be imported
        return None, f"not available: import of {name} failed: {err!r}"


def authors_operands(kind: str, v: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Their kernel's A (B*N, T, D, D) and b (B*N, T, D), in v's dtype, from our v and softmax gate logits
    (shapes as in ``scan_setup.scan_inputs``)."""
    a = torch.softmax(g, dim=-1)
    if kind == "hlru":
        B, T, N, m1 = a.shape
        m = m1 - 1
        shift = torch.eye(m, dtype=a.dtype, device=a.device)[:-1].expand(B, T, N, m - 1, m)
        A = torch.cat([a[..., None, 1:], shift], dim=-2)
        b = torch.cat([(a[..., 0] * v)[..., None], a.new_zeros(B, T, N, m - 1)], dim=-1)
    else:
        B, T, N, k, _ = a.shape
        A, b = a[..., 1:], a[..., 0] * v
    D = A.shape[-1]
    return (A.transpose(1, 2).reshape(B * N, T, D, D).contiguous(),
            b.transpose(1, 2).reshape(B * N, T, D).contiguous())


def authors_output(kind: str, y: torch.Tensor, B: int, N: int) -> torch.Tensor:
    """Our h from their y (B*N, T, D): (B, T, N) for H-LRU (the first companion entry), (B, T, N, k) for BD-LRU."""
    T, D = y.shape[1], y.shape[2]
    y = y.reshape(B, N, T, D).transpose(1, 2)
    return y[..., 0] if kind == "hlru" else y


def fla_gates(v: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """fla HGRN's x = a_0 v and log-decay g = log a_1 from our m = 1 logits (B, T, N, 2), softmax."""
    logp = torch.log_softmax(g.float(), dim=-1)
    return (logp[..., 0].exp() * v.float()).to(v.dtype), logp[..., 1].to(v.dtype)


def contenders(kind: str, D: int, authors: Optional[Callable], fla: Optional[Callable],
               authors_fused: Optional[Callable] = None) -> Dict[str, Callable]:
    """name -> ``setup(v, g) -> (forward(), the inputs it differentiates)`` for this case."""
    ours = lambda v, g: ((lambda: SCANS[kind](v, g, backend="triton")[0]), (v, g))  # noqa: E731
    out = {"ours": ours}
    if authors is not None:
        def authors_kernel(v, g):
            A, b = (x.detach().requires_grad_(True) for x in authors_operands(kind, v.detach(), g.detach()))
            return (lambda: authors(A, b)), (A, b)

        def authors_with_gates(v, g):
            B, N = v.shape[0], v.shape[2]
            return (lambda: authors_output(kind, authors(*authors_operands(kind, v, g)), B, N)), (v, g)

        out.update(authors_kernel=authors_kernel, authors_with_gates=authors_with_gates)
    if authors_fused is not None and kind == "hlru" and D == 1:
        def authors_fused_gates(v, g):  # their gates (B, T, N, 1, 2) hold [a_1, a_0]; v (B, T, N, 1)
            gates = g.detach().flip(-1)[..., None, :].contiguous().requires_grad_(True)
            values = v.detach()[..., None].contiguous().requires_grad_(True)
            return (lambda: authors_fused(gates, values)[..., 0]), (gates, values)

        out.update(authors_fused_gates=authors_fused_gates)
    if fla is not None and kind == "hlru" and D == 1:
        def fla_kernel(v, g):
            x, lg = (t.detach().requires_grad_(True) for t in fla_gates(v.detach(), g.detach()))
            return (lambda: fla(x, lg)[0]), (x, lg)

        out.update(fla_kernel=fla_kernel, fla_with_gates=lambda v, g: ((lambda: fla(*fla_gates(v, g))[0]), (v, g)))
    return out


def host_ms(step, calls: int = 10) -> float:
    """Wall ms the host takes to issue one call of ``step`` (the GPU queue drained before, not waited on inside):
    where it reaches the timed ms, the timing measures the host, not the kernels."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    elapsed = time.perf_counter() - start
    sync()
    return 1e3 * elapsed / calls


def time_contender(bench, name: str, setup, v, g, repeats: int, warmup: int, rep: int) -> dict:
    """fwd and fwd+bwd ms of one contender: ``repeats`` timings each, their min / median / max; beside them the
    host's ms to issue one fwd+bwd (``host_ms``) and the host's 1-minute load average when timing began, which
    tell a host-bound or crowded-host timing from a slow kernel."""
    forward, leaves = setup(v, g)
    out = {"host_load_1min": os.getloadavg()[0]}
    with torch.no_grad():
        out["fwd_ms"] = [bench(forward, warmup, rep) for _ in range(repeats)]
    for x in leaves:
        x.requires_grad_(True)
    dy = torch.randn_like(forward())
    step = lambda: torch.autograd.grad(forward(), leaves, dy)  # noqa: E731
    out["fwdbwd_ms"] = [bench(step, warmup, rep) for _ in range(repeats)]
    for key in ("fwd_ms", "fwdbwd_ms"):
        times = out[key]
        out[key] = dict(min=min(times), median=statistics.median(times), max=max(times), all=times)
    out["fwdbwd_host_ms"] = host_ms(step)
    return out


def time_backward_alone(bench, kind: str, v, g, repeats: int, warmup: int, rep: int) -> dict:
    """Our backward kernels alone (``scan_triton_lrnn._scan_backward`` from a saved h and a fixed dh, no autograd),
    ``repeats`` timings and their min / median / max: beside fwd+bwd through autograd, it shows whether a change
    between runs is in the kernels or around them."""
    with torch.no_grad():
        h = SCANS[kind](v, g, backend="triton")[0]
    dh = torch.randn_like(h)
    step = lambda: scan_triton_lrnn._scan_backward(kind, v, g, None, None, h, dh, None, "softmax", None)  # noqa: E731
    times = [bench(step, warmup, rep) for _ in range(repeats)]
    return dict(min=min(times), median=statistics.median(times), max=max(times), all=times)


def check_against_ours(kind: str, name: str, setup, v, g) -> float:
    """Largest |h_other - h_ours| / (largest |h_ours|) on these inputs: whether a contender computes our scan."""
    with torch.no_grad():
        ours = SCANS[kind](v, g, backend="triton")[0].float()
        theirs = setup(v, g)[0]().float()
    return float((theirs - ours).abs().max() / ours.abs().max().clamp_min(1e-30))
