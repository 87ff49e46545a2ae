"""Language-model comparison with scripts/train.py: the report (commands of the runs in benchmarks/README.md)."""
