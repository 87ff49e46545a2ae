# The kernel benchmarks' smoke modes run the Triton kernels through Triton's CPU interpreter; this must be set
# before triton (and so hf_lrnn) is imported.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
