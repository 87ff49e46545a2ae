# Triton kernels run through Triton's CPU interpreter in the tests; this must be set before triton
# (and so hf_lrnn) is imported. On a CUDA machine, run the tests with TRITON_INTERPRET=0 to use the GPU.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
