"""The Triton scans' launch plans as functions of (B, T, N, size, SMs): ``chunk_plan`` (time chunks of the
sequential kernels; the targets scale with the device's SMs / REFERENCE_SMS). Pure integer functions: the
expected plans are worked out by hand from the docstrings."""
import pytest
import triton

from hf_lrnn.triton_plan_lrnn import REFERENCE_SMS, cdiv, chunk_plan, next_power_of_2, summary_copies


def test_integer_helpers_match_triton():
    """The planners' plain-Python cdiv and next_power_of_2 (host code avoids Triton's constexpr functions, ~2 us a
    call) give Triton's results wherever the plans call them (positive sizes)."""
    for a in range(1, 300):
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 7, 64, 128, 257):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
    assert cdiv(0, 64) == 0 and cdiv(1 << 40, 3) == triton.cdiv(1 << 40, 3)
    assert next_power_of_2(0) == 1 and next_power_of_2((1 << 40) + 1) == 1 << 41


@pytest.mark.parametrize("kind,B,T,N,D,sms,plan", [
    # H-LRU m = 1, B 8, W 2048: 2^19 / (8 2048 2) = 16 chunks of 256 steps on the H200 / H100 (132 SMs)
    ("hlru", 8, 4096, 2048, 1, 132, (256, 16)),
    ("hlru", 8, 4096, 2048, 1, 66, (512, 8)),  # half the SMs, half the chunks
    ("hlru", 8, 4096, 2048, 1, 114, (293, 14)),  # H100 PCIe: ceil(2^19 114 / (132 32768)) = 14
    # B = 1, T = 32k, m = 2: ceil(2^19 / 6144) = 86 chunks (fewer than T / 128 = 256)
    ("hlru", 1, 32768, 2048, 2, 132, (382, 86)),
    # the chunks stay at least MIN_CHUNK_LEN = 128 steps: T / 128 = 4 chunks at most
    ("hlru", 1, 512, 64, 1, 132, (128, 4)),
    # BD-LRU k = 4, B 8, N 512: 2^18 / (8 512 4) = 16 chunks of 256 steps
    ("bdlru", 8, 4096, 512, 4, 132, (256, 16)),
    # BD-LRU k = 2, B 1, T 32k, N 1024: 2^18 / (1024 2) = 128 chunks of 256 steps
    ("bdlru", 1, 32768, 1024, 2, 132, (256, 128)),
    # BD-LRU k = 16 (the step kernels, one block a program), B 1, T 32k, N 128: 128 programs, under 2.25 a SM, so
    # the BD-LRU rule: 2^18 / (128 16) = 128 chunks of 256 steps; B 2: 256 programs (1.94 a SM), 2^18 / (2 128
    # 16) = 64 chunks; B 4: 512 programs, one chunk; B 8, T 4096: 1024 programs, one chunk
    ("bdlru", 1, 32768, 128, 16, 132, (256, 128)),
    ("bdlru", 2, 16384, 128, 16, 132, (256, 64)),
    ("bdlru", 4, 8192, 128, 16, 132, (8192, 1)),
    ("bdlru", 8, 4096, 128, 16, 132, (4096, 1)),
    # k = 12: four blocks a program (16 x 16 tiles), N 170 -> 43 programs a sequence; B 8: 344 >= 2.25 132 = 297,
    # one chunk; B 4: 172, so ceil(2^18 / (4 170 12)) = 33 chunks; 66 SMs: B 4 >= 2.25 66, one chunk
    ("bdlru", 8, 4096, 170, 12, 132, (4096, 1)),
    ("bdlru", 4, 8192, 170, 12, 132, (249, 33)),
    ("bdlru", 4, 8192, 170, 12, 66, (8192, 1)),
    ("hlru", 8, 4096, 2048, 1, None, (4096, 1)),  # not a GPU: one chunk
    # m = 16 chunks too: ceil(2^19 / (8 2048 17)) = 2 chunks
    ("hlru", 8, 4096, 2048, 16, 132, (2048, 2)),
    # B = 1, T = 32k, N = 128, m = 16: ceil(2^19 / (128 17)) = 241 chunks (fewer than T / 128 = 256)
    ("hlru", 1, 32768, 128, 16, 132, (136, 241)),
])
def test_chunk_plan(kind, B, T, N, D, sms, plan):
    assert chunk_plan(kind, B, T, N, D, sms) == plan


def test_chunk_plan_forced_length_every_size():
    """A forced chunk_size splits time for H-LRU up to m = 16 and BD-LRU up to k = 16 (the sequential kernels to
    k = 8, the step kernels above), on a GPU as off it."""
    assert chunk_plan("hlru", 1, 37, 3, 16, None, chunk_size=8) == (8, 5)
    assert chunk_plan("bdlru", 1, 37, 3, 8, None, chunk_size=8) == (8, 5)
    assert chunk_plan("bdlru", 1, 37, 3, 16, None, chunk_size=8) == (8, 5)
    assert chunk_plan("bdlru", 1, 32768, 128, 16, 132, chunk_size=4096) == (4096, 8)


def test_summary_copies():
    """All m + 1 lag copies in one program up to m = 8; above, even groups of about 64 lag values a program."""
    assert [summary_copies(m) for m in range(1, 9)] == [m + 1 for m in range(1, 9)]
    assert [summary_copies(m) for m in range(9, 17)] == [5, 6, 4, 5, 5, 4, 4, 4]


def test_chunk_plan_forced_length_and_monotone_in_sms():
    assert chunk_plan("hlru", 8, 4096, 2048, 1, 132, chunk_size=100) == (100, 41)
    chunks = [chunk_plan("hlru", 2, 65536, 1024, 2, sms)[1] for sms in (16, 66, 108, REFERENCE_SMS, 264)]
    assert chunks == sorted(chunks) and chunks[0] < chunks[-1]
