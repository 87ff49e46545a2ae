"""Import a file of scripts/ as a module, for the tests of the command-line scripts; run code where hf_lrnn
cannot be imported."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_without_hf_lrnn(code, tmp_path):
    """Run code in a fresh Python where import hf_lrnn fails (the import blocked, PYTHONPATH unset, another
    working directory, an empty HF cache, offline), stdin closed (a question would fail, not wait)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    code = 'import sys\nsys.modules["hf_lrnn"] = None  # import hf_lrnn raises ImportError, even if installed\n' + code
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
