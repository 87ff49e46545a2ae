"""Language-model comparison with scripts/train.py: the GPU driver (run_device.sh) and the report."""
