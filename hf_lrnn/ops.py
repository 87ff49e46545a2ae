"""The public scan ops under their short name, ``hf_lrnn.ops``: ``hlru_scan`` and ``bdlru_scan`` and what
they are built from. They live in ``ops_lrnn``, the name under which ``save_pretrained`` ships them with a
model, so that they cannot overwrite a user's own ``ops.py``; this module is not shipped."""
from .ops_lrnn import (  # noqa: F401
    BACKENDS,
    CHUNKED_MAX_CPU_WORK,
    FLOAT_DTYPES,
    LOOP_MAX_T,
    TRITON_IMPORT_ERROR,
    ScanUnsupportedError,
    bdlru_scan,
    check_scan_inputs,
    hlru_lagged_states,
    hlru_scan,
    mask_may_be_dropped,
    select_scan,
)
