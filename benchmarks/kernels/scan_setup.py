"""What every kernel benchmark shares: the scan inputs of one case, and the device check of the GPU scripts
(their ``--smoke`` mode runs the Triton kernels on the CPU through Triton's interpreter)."""
import os

import torch

from hf_lrnn import ops

SCANS = {"hlru": ops.hlru_scan, "bdlru": ops.bdlru_scan}  # kind -> the public scan


def scan_inputs(kind: str, B: int, T: int, N: int, D: int, device="cpu", dtype=torch.float32, logit_scale=1.0):
    """v and gate logits of one scan, standard normal (the logits times ``logit_scale``): H-LRU (kind "hlru")
    v (B, T, N) and logits (B, T, N, D + 1) for N channels of order m = D; BD-LRU v (B, T, N, D) and logits
    (B, T, N, D, D + 1) for N blocks of size k = D."""
    shape = (B, T, N) if kind == "hlru" else (B, T, N, D)
    v = torch.randn(*shape, device=device).to(dtype)
    return v, (logit_scale * torch.randn(*shape, D + 1, device=device)).to(dtype)


def require_device(script: str, smoke: bool) -> str:
    """The device a GPU script runs on: "cuda", or "cpu" for ``--smoke`` under TRITON_INTERPRET=1; otherwise
    exits with the reason."""
    if smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit(f"{script} --smoke runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 for a CPU check)")
    return "cuda"
