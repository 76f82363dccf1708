"""What people read: at 80 columns (plain terminals, pipes, CI logs) no table value and no option
name is cut, and data prints as it is, square brackets included (no rich markup in data or help)."""
from pathlib import Path

import pytest
import typer
import yaml
from rich.cells import cell_len

from costmodel.cli import common
from costmodel.cli.app import app, main

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "plans").glob("*.yaml"))

MAIN_COMMANDS = [
    ["train", "llama3-8b", "--micro-batch", "1", "--seq-len", "4096", "--recompute", "full", "--steps", "1000"],
    ["train", "gpt3-175b", "--hardware", "dgx-a100", "--nodes", "128", "--tp", "8", "--pp", "8", "--global-batch", "1536"],
    ["infer", "llama3-8b", "--batch", "32", "--prompt-len", "2048", "--gen-len", "256", "--max-tpot-ms", "30"],
    ["infer", "llama-1.3b", "--eager", "--batch", "8", "--host-time-factor", "0.8"],
    ["search", "llama3-70b", "--hardware", "dgx-h100", "--devices", "8..64", "--global-batch", "512", "--seq-len", "4096",
     "--top", "3"],
    ["search", "llama3-70b", "--hardware", "dgx-h100", "--hardware", "hgx-h200", "--devices", "64", "--global-batch", "512",
     "--seq-len", "4096", "--top", "3", "--tokens", "1e12"],
    ["search", "llama3-70b", "--infer", "-H", "h100-sxm", "-H", "h200-sxm", "--prompt-len", "2048", "--max-tpot-ms", "40",
     "--max-ttft-ms", "3000"],
    ["search", "llama3.1-70b", "--infer", "-H", "h100-sxm", "-H", "h200-sxm", "--request-rate", "4", "--max-ttft-ms",
     "1000", "--weight-dtype", "bf16,fp8", "--kv-dtype", "fp8"],
    ["validate", "data/samples/h100-measured.jsonl"],
    ["validate", "data/samples/playbook-nanotron-8gpus.jsonl"],
    ["fit-profile", "data/samples/playbook-nanotron-8gpus.jsonl", "--framework", "nanotron", "--folds", "0"],
    ["check", *PLANS],
    ["check", "tests/fixtures/plans/too-big.yaml"],
    ["hardware", "list"],
    ["hardware", "show", "h100-sxm"],
    ["hardware", "show", "dgx-h100"],
    ["model", "show", "llama3-70b"],
    ["roofline", "llama3-8b", "--seq-len", "4096"],
    ["scale", "--budget-usd", "1e6", "--hardware", "h100-sxm"],
]


@pytest.fixture
def width80(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for con in (common.console, common.err_console):
        monkeypatch.setattr(con, "width", 80)


def _run(args, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.mark.parametrize("args", MAIN_COMMANDS, ids=[" ".join(a[:2]) for a in MAIN_COMMANDS])
def test_main_commands_at_80_columns_cut_no_value(args, capsys, monkeypatch, width80):
    code, out, err = _run(args, capsys, monkeypatch)
    assert code in (0, 1), err
    assert "…" not in out, out
    assert max(cell_len(line) for line in out.splitlines()) <= 80


def test_search_at_80_columns_keeps_every_column(capsys, monkeypatch, width80):
    import costmodel

    args = MAIN_COMMANDS[4]
    _, out, _ = _run(args, capsys, monkeypatch)
    res = costmodel.search("llama3-70b", "dgx-h100", "8..64", global_batch=512, seq_len=4096, top=3)
    for head in ("#", "layout", "step", "TF/s", "MFU", "memory"):
        assert f" {head} " in out, head
    for c in res.top:
        assert f"{c.mfu:.0%}" in out and f"{c.tflops_per_device:.0f}" in out


def _options(cmd) -> list[str]:
    return [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]


def _commands():
    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [([name, sub], c) for sub, c in subs.items()] if subs else [([name], cmd)]
    return out


@pytest.mark.parametrize("path, cmd", _commands(), ids=[" ".join(p) for p, _ in _commands()])
def test_help_at_80_columns_shows_whole_option_names(path, cmd, capsys, monkeypatch, width80):
    code, out, _ = _run([*path, "--help"], capsys, monkeypatch)
    assert code == 0 and "…" not in out
    words = set(out.replace("/", " ").replace(",", " ").split())
    missing = [o for o in _options(cmd) if o not in words]
    assert not missing, (missing, out)


def test_square_brackets_in_data_and_help_are_printed(tmp_path, capsys, monkeypatch):
    _, out, _ = _run(["hardware", "show", "h100-sxm"], capsys, monkeypatch)
    assert "source[memory]" in out and "source[peak_flops]" in out
    _, out, _ = _run(["train", "--help"], capsys, monkeypatch)
    assert "costmodel[plot]" in " ".join(out.split())
    spec = {"id": "lab-gpu", "name": "Lab GPU [rack 3] [bold]x[/bold]", "vendor": "[lab]", "kind": "gpu",
            "memory": {"capacity": "48 GB", "bandwidth": "864 GB/s"}, "peak_flops": {"bf16": "362 TFLOP/s"},
            "tdp": "350 W", "sources": {"memory": "datasheet [p. 3]"}}
    f = tmp_path / "lab [1].yaml"
    f.write_text(yaml.safe_dump(spec))
    _, out, _ = _run(["hardware", "show", "lab-gpu", "--hardware-file", str(f)], capsys, monkeypatch)
    flat = " ".join(out.split())
    for text in ("Lab GPU [rack 3] [bold]x[/bold]", "[lab]", "datasheet [p. 3]", "lab [1].yaml"):
        assert text in flat, text
    _, out, _ = _run(["hardware", "list", "--hardware-file", str(f)], capsys, monkeypatch)
    assert "[rack 3]" in out
    code, _, err = _run(["train", "no-such [model]"], capsys, monkeypatch)
    assert code == 2 and "no-such [model]" in err
