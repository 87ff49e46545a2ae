"""Result files of the benchmarks: a file a user already has is replaced only when asked (``--overwrite``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace result files that already exist")


def refuse_existing(parser: argparse.ArgumentParser, paths, overwrite: bool) -> None:
    """``parser.error`` (one line, exit status 2) naming the first of ``paths`` that exists, unless ``overwrite``;
    called before any work."""
    existing = [str(p) for p in map(Path, paths) if p.exists()]
    if existing and not overwrite:
        parser.error(f"{existing[0]} exists: pass --overwrite to replace it, or give another --out")
