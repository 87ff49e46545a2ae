"""Spectra of the learned transitions: the study (``run``), the analysis (``analysis``) and the CLI for one
saved model (``cli``)."""
