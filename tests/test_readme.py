"""The README's Python blocks run as written, in order and in one namespace (as a reader runs them in one
session), in an empty working directory that they leave empty. A ```text block that follows a Python block
(with at most a one-line lead-in ending in ":") is that block's output and must appear in what it prints.
The set-up commands are the ones .ci/run runs."""
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def python_blocks():
    """(line number, code, expected output or None) for every ```python block of the README."""
    fences = list(FENCE.finditer(README))
    blocks = []
    for fence, following in zip(fences, fences[1:] + [None]):
        if fence.group(1) != "python":
            continue
        expected = None
        if following is not None and following.group(1) == "text":
            lead_in = README[fence.end():following.start()].strip()
            if not lead_in or ("\n" not in lead_in and lead_in.endswith(":")):
                expected = following.group(2)
        blocks.append((README.count("\n", 0, fence.start()) + 1, fence.group(2), expected))
    return blocks


def test_python_blocks_run_and_print_what_the_readme_shows(tmp_path, monkeypatch):
    blocks = python_blocks()
    _, first_code, first_output = blocks[0]
    assert README.index(first_code) > README.index("## Quickstart") and first_output, \
        "the first Python block is the quickstart, with its output"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for line, code, expected in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
        if expected is not None:
            assert expected.strip() in printed.getvalue(), (
                f"README.md line {line}: the output shown is not what the block printed:\n{printed.getvalue()}")
    assert not list(tmp_path.iterdir()), "the README's code left files in the working directory"


def test_ci_runs_the_set_up_commands():
    """.ci/run installs with the README's install command and runs exactly its test command."""
    set_up = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", set_up, re.S).group(1).strip().splitlines()
    install, test = (line.split("#")[0].strip() for line in commands)
    install = install.split(" && ")[0]  # then the main job: python scripts/train.py
    assert install.startswith("pip install -e ") and test == "python -m pytest -q"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert '"$1/bin/pip" ' + install.removeprefix("pip ") in ci_lines
    assert '"$ci_dir/env/bin/python" ' + test.removeprefix("python ") in ci_lines
