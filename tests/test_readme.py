"""The README's examples run, so they cannot rot: python blocks are executed, `$ costmodel ...`
lines run in-process and must exit 0 (validate lines need ../shared beside the checkout)."""
import re
import shlex
from pathlib import Path

import pytest

from costmodel.cli.app import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ROOT = Path(__file__).resolve().parents[1]


def test_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


COMMANDS = [line[2:] for block in re.findall(r"```console\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.startswith("$ costmodel ")]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_console_lines_run(cmd, monkeypatch, capsys):
    args = shlex.split(cmd)[1:]
    monkeypatch.chdir(ROOT)
    if any("shared/truth" in a for a in args) and not (ROOT.parent / "shared" / "truth").exists():
        pytest.skip("../shared/truth not present")
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
