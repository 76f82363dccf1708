"""The README's and docs/usage.md's examples run, so they cannot rot: python blocks are executed,
`$ costmodel ...` lines and the `costmodel` commands of the README's set-up blocks run in-process
and must exit 0, using only what a fresh clone holds (no ../shared, no files the clone lacks)."""
import glob
import re
import shlex
from pathlib import Path

import pytest

from costmodel.cli.app import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ROOT = Path(__file__).resolve().parents[1]
USAGE = (ROOT / "docs" / "usage.md").read_text()


def test_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README + USAGE, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


COMMANDS = list(dict.fromkeys(line[2:] for block in re.findall(r"```console\n(.*?)```", README + USAGE, re.S)
                              for line in block.splitlines() if line.startswith("$ costmodel ")))
# The set-up blocks: one `&&` chain per line, pasted as they are into a fresh clone.
SETUP = [line for block in re.findall(r"```sh\n(.*?)```", README, re.S) for line in block.splitlines() if line.strip()]
SETUP_COMMANDS = [part.strip() for line in SETUP for part in line.split("&&") if part.strip().startswith("costmodel ")]


def test_readme_has_five_examples():
    examples = [line for block in re.findall(r"```console\n(.*?)```", README, re.S)
                for line in block.splitlines() if line.startswith("$ costmodel ")]
    assert len(examples) == 5


def _run(cmd, monkeypatch, capsys):
    args = shlex.split(cmd)[1:]
    monkeypatch.chdir(ROOT)
    for a in args:
        assert not a.startswith("../") and "shared/truth" not in a, f"{cmd!r} needs a file outside the clone: {a}"
        if "/" in a and not a.startswith("-"):
            assert glob.glob(str(ROOT / a)), f"{cmd!r}: {a} is not in the clone"
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert (exc.value.code or 0) == 0, capsys.readouterr().err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_console_lines_run(cmd, monkeypatch, capsys):
    _run(cmd, monkeypatch, capsys)


def test_setup_blocks_are_two_chains_ending_in_commands_that_work_from_a_clone():
    assert len(SETUP) == 2 and len(SETUP_COMMANDS) == 1
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in SETUP:
        for spec in re.findall(r"pip install (\S+)", line):
            spec = spec.strip("'\"")
            assert spec == "." or (spec.startswith(".[") and set(spec[2:-1].split(",")) <= set(extras)), spec


@pytest.mark.parametrize("cmd", SETUP_COMMANDS)
def test_setup_commands_exit_0(cmd, monkeypatch, capsys):
    _run(cmd, monkeypatch, capsys)
