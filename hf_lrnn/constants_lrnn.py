"""Names and limits shared by the configuration and the scan ops, with no import of torch or the kernels
(so that loading a configuration, also as remote code, does not load the ops), and the error type of the
scans' refusals."""

MIXERS = ("hlru", "bdlru")
# How the m+1 (H-LRU) or k+1 (BD-LRU) gate logits of a channel or block row become coefficients (gates_lrnn.py).
GATE_NORMALIZATIONS = ("softmax", "sigmoid_l1", "relu_l1", "tanh_l1", "l1", "none")
# Which scan implementation runs (ops_lrnn.select_scan).
SCAN_BACKENDS = ("auto", "torch", "triton", "reference")


class ScanUnsupportedError(RuntimeError, ValueError, TypeError):
    """A scan the chosen implementation cannot run: Triton not installed or not on CUDA tensors, an order or
    block size beyond its kernels, float64 inputs to its kernels, time chunking of states larger than 8.

    A subclass of RuntimeError, ValueError and TypeError, the types these refusals raised before, so that
    existing ``except`` clauses still catch them."""
