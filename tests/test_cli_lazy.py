"""A command imports what it needs when it runs: `costmodel --help` and `costmodel hardware list`
import neither numpy nor the calibration code, and the table the root help is printed from (so that
listing the commands imports none of them) says what the command modules register."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from costmodel.cli import app as app_module

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys, io, contextlib
from costmodel.cli.app import main
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
mods = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'costmodel', 'pydantic', 'yaml', 'rich'))
print(json.dumps({"code": code, "modules": mods, "out": out.getvalue()}))
"""


def _imports(*args):
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["hardware", "list", "--json"], ["model", "list"]])
def test_listing_commands_import_no_numpy_nor_calibration(args):
    got = _imports(*args)
    assert got["code"] == 0 and got["out"]
    assert not [m for m in got["modules"] if m == "numpy" or m.startswith(("costmodel.calibration", "costmodel.plan"))], \
        got["modules"]


@pytest.mark.parametrize("args", [["--help"], ["hardware", "list", "--json"], ["hardware", "show", "h100-sxm", "--json"]])
def test_json_and_help_import_no_rich(args):
    """rich (the tables' and progress bars' library) is imported when a command prints a table."""
    got = _imports(*args)
    assert got["code"] == 0 and got["out"]
    assert not [m for m in got["modules"] if m.split(".")[0] == "rich"], got["modules"]
    assert [m for m in _imports("hardware", "list")["modules"] if m == "rich.table"]


def test_help_imports_no_command_module():
    got = _imports("--help")
    assert not [m for m in got["modules"] if m.endswith("_cmd") or m.split(".")[0] in ("pydantic", "yaml")], got["modules"]
    for name in app_module.COMMANDS:
        assert f"  {name} " in got["out"]


def test_command_table_matches_the_registered_commands():
    full = typer.main.get_group(app_module.app)
    assert list(full.commands) == list(app_module.COMMANDS)
    for name, cmd in full.commands.items():
        module, text = app_module.COMMANDS[name]
        first = " ".join((cmd.help or "").split("\n\n")[0].split())
        assert text == first, name
        callback = cmd.callback if cmd.callback is not None and not hasattr(cmd, "commands") else None
        if callback is not None:
            assert getattr(callback, "__wrapped__", callback).__module__ == f"costmodel.cli.{module}", name


def test_root_help_is_the_full_apps_help(capsys):
    """The lazy root prints what the whole application would (same order, same short help)."""
    full = typer.main.get_group(app_module.app)
    want = full.get_help(full.make_context("costmodel", ["--help"], resilient_parsing=True))
    root = app_module._root()
    have = root.get_help(root.make_context("costmodel", ["--help"], resilient_parsing=True))
    assert have == want
