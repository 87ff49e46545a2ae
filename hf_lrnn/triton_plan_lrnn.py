"""Launch planning of the Triton scans (``scan_triton_lrnn`` runs the plans): which kernels run an H-LRU of order m
or a BD-LRU of block size k, their launch constants, and how time is split into chunks.

The launch constants come from sweeps of ``benchmarks/kernels/tune_plan.py`` (U and the BD-LRU chunk target for
m <= 4 and k <= 4: one H100, commit ac5bf47, ``benchmarks/results/kernels/tune_plan_h100.jsonl``; the step kernels'
chunking threshold: one H100, commit 731a2f6, ``tune_step_h100_731a2f6.jsonl`` there) and of its predecessor
``tune_scan.py`` (the rest: one H200, commit 320b203, since removed; benchmarks/README.md, "Tuning").
The plan derives from the device only through its number of streaming multiprocessors (SMs): the chunk targets
scale with SMs / REFERENCE_SMS (``chunk_plan``; the same plan on any 132-SM GPU, H100 SXM and H200 alike). It is a
pure function of (B, T, N, size, SMs): deterministic, no tuning at run time.
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

import torch

MAX_HLRU_ORDER = 16  # largest supported m
MAX_BDLRU_BLOCK = 16  # largest supported k
# Every supported size runs in time chunks (the summaries carry (D + 1) * D numbers per channel or block; BD-LRU
# k > 8 runs the step kernels, whose summary passes hold all k + 1 state copies of a block tile in one program).
# An H-LRU summary pass runs the m + 1 copies of the lags in one program for m <= MAX_ONE_GROUP_ORDER; above, in
# groups of copies, each program holding about SUMMARY_GROUP_REGISTERS lag values (17 copies of 16 lags, 272 values
# a thread, spill registers on sm_90).
MAX_ONE_GROUP_ORDER = 8
SUMMARY_GROUP_REGISTERS = 64
MAX_SEQUENTIAL_BLOCK = 8  # BD-LRU block sizes run by the sequential kernels; larger ones by the step kernels
# Time chunking (sweeps of the sequential kernels at B = 8, T = 4096 and B = 1, T = 32k, width 2048): chunks of
# at least MIN_CHUNK_LEN steps, as many as bring H-LRU to about HLRU_TARGET_WORK = B * N * (m + 1) * chunks (H200,
# tune_scan.py) and BD-LRU to BDLRU_TARGET_WIDTH = B * N * k * chunks (H100, tune_plan.py: chunks of 256 steps at
# both shapes for k = 2 and 4, 1-8 % faster than the H200 rule's 128). The targets hold for REFERENCE_SMS SMs;
# a device with S SMs aims at S / REFERENCE_SMS of them.
# The step kernels (BD-LRU k > 8) run one step per loop iteration and are latency-bound, and their summary pass
# carries k + 1 state copies; they chunk only while B x (programs over N) is under STEP_MIN_PROGRAMS_PER_SM per
# SM, then by the BD-LRU rule. Swept by tune_plan (H100, commit 731a2f6, W = 2048, 32k tokens as B = 8 ... 1
# sequences, results/kernels/tune_step_h100_731a2f6.jsonl), fwd+bwd ms one chunk / best chunks: k = 12 (four
# blocks a program) 344 programs (2.6 a SM) 14.6 / 21.2, 172 (1.3) 27.0 / 21.4; k = 16 (one block) 512 programs
# (3.9 a SM) 23.5 / 25.5, 256 (1.9) 43.6 / 26.0. The threshold lies between 1.9 and 2.6 a SM: 2.25, their
# geometric mean, picks the faster plan at all eight shapes swept.
MIN_CHUNK_LEN = 128
HLRU_TARGET_WORK = 1 << 19
BDLRU_TARGET_WIDTH = 1 << 18
REFERENCE_SMS = 132
STEP_MIN_PROGRAMS_PER_SM = 2.25
# (U steps per loop iteration, channels or blocks per program, warps) of the sequential kernels, by m or k (m, k
# <= 4: H100 sweep of tune_plan.py, the U fastest at both shapes; m = 3, 8 and k = 3, 8: H200 sweeps of
# tune_scan.py); other sizes use sequential_config's default.
HLRU_FWD_CONFIG = {1: (2, 128, 4), 2: (2, 128, 4), 3: (4, 128, 4), 4: (2, 128, 4), 8: (4, 128, 4)}
HLRU_BWD_CONFIG = {1: (2, 128, 4), 2: (2, 128, 4), 3: (8, 128, 4), 4: (4, 128, 4), 8: (2, 128, 4)}
BDLRU_FWD_CONFIG = {2: (4, 128, 4), 3: (2, 128, 4), 4: (4, 128, 4), 8: (1, 128, 4)}
BDLRU_BWD_CONFIG = {2: (2, 128, 4), 3: (2, 128, 4), 4: (1, 128, 4), 8: (1, 128, 4)}
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_unsupported_reason(kind: str, size: int) -> Optional[str]:
    """None if the Triton kernels support H-LRU order ``size`` (kind "hlru") or BD-LRU block size
    ``size`` (kind "bdlru"), else a human-readable reason."""
    limit = {"hlru": MAX_HLRU_ORDER, "bdlru": MAX_BDLRU_BLOCK}.get(kind)
    if limit is None:
        return f"unknown scan kind {kind!r} (expected 'hlru' or 'bdlru')"
    name = "order m" if kind == "hlru" else "block size k"
    if not 1 <= size <= limit:
        return f"the Triton {kind} kernels support {name} in 1..{limit}, got {size}"
    return None


NUM_STAGES = 3  # software-pipelining depth of the step kernels' time loops and of the combine kernel's chunk loop
STEP_TILE = 1024  # fp32 gate entries per program of the step kernels
NUM_WARPS = 4
# The combine kernel walks the chunks in sequence, one (channel tile, sequence) a program; a tile holds
# COMBINE_TILE entries of the chunk maps P (BLOCK_N channels x DP x DP), at most COMBINE_MAX_BLOCK channels.
# 256 entries at 4 warps: against 64 entries (4 warps), 256 at 2 warps and 1,024 (4 warps), within 8 % of the best
# at every D and shape but B = 1, D = 2..8, where 64 entries were 8-14 % faster (and 33-46 % slower at B = 8,
# D = 4 and 8); one H200, 2026-12-06, benchmarks/results/kernels/probe_combine_h200_a5fd022.jsonl.
COMBINE_TILE = 256
COMBINE_MAX_BLOCK = 64


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of ints, b > 0. The planners' integer helpers are plain Python: ``triton.cdiv`` and
    ``triton.next_power_of_2`` are Triton constexpr functions, about 2 us a call in host code (Triton 3.6), and a
    chunked forward+backward made twelve such calls."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def sequential_config(kind: str, size: int, backward: bool) -> Tuple[int, int, int]:
    """(U, BLOCK_N, num_warps) of the sequential kernels for H-LRU order or BD-LRU block size ``size``."""
    tables = {"hlru": (HLRU_FWD_CONFIG, HLRU_BWD_CONFIG), "bdlru": (BDLRU_FWD_CONFIG, BDLRU_BWD_CONFIG)}
    return tables[kind][backward].get(size, (2 if size <= 4 else 1, 128, 4))


def combine_geometry(D: int) -> Tuple[int, int]:
    """(DP, BLOCK_N) of the combine kernel at order or block size D: DP the next power of two >= D, BLOCK_N
    channels (or blocks) a program, COMBINE_TILE / DP^2 up to COMBINE_MAX_BLOCK (D = 1, 2: 64; 4: 16; 8: 4;
    16: 1)."""
    DP = next_power_of_2(D)
    return DP, max(1, min(COMBINE_MAX_BLOCK, COMBINE_TILE // (DP * DP)))


def summary_copies(m: int) -> int:
    """Copies of the lags run by one program of an H-LRU summary pass of order m (of the m + 1 copies, program
    axis 0 holding the groups, ``cdiv(m + 1, copies)`` a channel tile): all m + 1 for m <= MAX_ONE_GROUP_ORDER, else
    the m + 1 split evenly into the fewest groups of about SUMMARY_GROUP_REGISTERS lag values (m = 9: 2 groups of
    5 copies, m = 12: 3 of 5, m = 16: 5 of 4, the last group's 3 copies past m + 1 unused)."""
    if m <= MAX_ONE_GROUP_ORDER:
        return m + 1
    groups = cdiv(m * (m + 1), SUMMARY_GROUP_REGISTERS)
    return cdiv(m + 1, groups)


def chunk_plan(kind: str, B: int, T: int, N: int, D: int, sms: Optional[int],
               chunk_size: Optional[int] = None) -> Tuple[int, int]:
    """(chunk length L, chunks C) of a scan of (B, T, N) at order or block size D on a device of ``sms`` SMs (None:
    not a GPU, one chunk): as many chunks of at least MIN_CHUNK_LEN steps as bring H-LRU's B N (m + 1) C to
    HLRU_TARGET_WORK sms / REFERENCE_SMS (BD-LRU's B N k C to BDLRU_TARGET_WIDTH sms / REFERENCE_SMS); the step
    kernels (BD-LRU k > 8) one chunk while their B P programs (P over N) reach STEP_MIN_PROGRAMS_PER_SM sms;
    ``chunk_size`` forces L."""
    if sms is None:
        want = 1
    elif kind == "hlru":
        want = cdiv(HLRU_TARGET_WORK * sms, REFERENCE_SMS * B * N * (D + 1))
    elif D > MAX_SEQUENTIAL_BLOCK and B * cdiv(N, step_geometry(N, D)[1]) >= STEP_MIN_PROGRAMS_PER_SM * sms:
        want = 1
    else:
        want = cdiv(BDLRU_TARGET_WIDTH * sms, REFERENCE_SMS * B * N * D)
    L = max(1, min(chunk_size, T)) if chunk_size is not None else cdiv(T, max(1, min(want, T // MIN_CHUNK_LEN)))
    return L, cdiv(T, L)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sms(v: torch.Tensor) -> Optional[int]:
    """The SM count of v's GPU, None for a tensor not on CUDA (the interpreter)."""
    if not v.is_cuda:
        return None
    return _sm_count(v.device.index if v.device.index is not None else torch.cuda.current_device())


def scan_chunk_plan(kind: str, v: torch.Tensor, D: int, chunk_size: Optional[int]) -> Tuple[int, int]:
    """(chunk length L, chunks C) of a scan: from the shapes and the device alone, so that forward and backward
    agree."""
    B, T, N = v.shape[:3]
    return chunk_plan(kind, B, T, N, D, _device_sms(v), chunk_size)


def step_geometry(N: int, K: int) -> Tuple[int, int]:
    """Padded width KP and blocks per program of the step kernels."""
    KP = next_power_of_2(K + 1)
    return KP, max(1, min(next_power_of_2(N), STEP_TILE // (KP * KP)))
