"""docs/validation.md is what `python -m costmodel.validation_page` prints now, over every shipped
record file, and the fit / held-out split it reports is the one the fits used."""
import fnmatch
from pathlib import Path

import pytest

from costmodel.cli.app import main
from costmodel.validate import read_records
from costmodel.validation_page import REGENERATE, load_splits, markdown, shipped_record_files, split_records

ROOT = Path(__file__).resolve().parents[1]


def test_committed_page_is_current():
    page = markdown([str(ROOT / f) for f in shipped_record_files(ROOT)], root=ROOT, summary=True)
    committed = (ROOT / "docs" / "validation.md").read_text()
    assert page == committed, f"docs/validation.md is stale: regenerate it with `{REGENERATE}`"


def test_cli_markdown_prints_the_same_rows(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    f = "data/published/megatron-2021.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--markdown", f])
    assert (exc.value.code or 0) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(f"| `{f}`")]
    committed = [line for line in (ROOT / "docs" / "validation.md").read_text().splitlines()
                 if line.startswith(f"| `{f}`")]
    assert rows and rows == committed


def test_every_shipped_jsonl_is_on_the_page_or_excused():
    """A record file added under data/ must be named in data/validation-splits.yaml (with its
    split) or listed as not validated, with the reason; and every named file exists."""
    splits = load_splits()
    named = set(splits["files"])
    for f in named:
        assert (ROOT / f).is_file(), f
    shipped = set(shipped_record_files(ROOT))
    assert shipped == named, (sorted(shipped - named), sorted(named - shipped))
    all_jsonl = {p.relative_to(ROOT).as_posix() for p in (ROOT / "data").rglob("*.jsonl")}
    excused = {f for f in all_jsonl
               if any(fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(Path(f).name, pat) for pat in splits["not_validated"])}
    assert all_jsonl == named | excused


def test_every_third_split_is_fit_hosts_split():
    """The page's fit / held-out parts of the host-constant files are the ones
    costmodel/bench/fit_host.py fitted and held out (its own selection, written independently)."""
    entries = load_splits()["files"]
    f = "data/measurements/h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl"
    recs = read_records(ROOT / f)
    parts = split_records(recs, entries[f])
    # fit_host.py: single-GPU train records with a measured step time, sorted by name, index % 3 == 2 held out
    train = sorted(r["name"] for _, r in recs if r.get("kind") == "train" and (r.get("devices") or 1) == 1
                   and isinstance(r["measured"].get("step_seconds"), float))
    held = {n for i, n in enumerate(train) if i % 3 == 2}
    assert {r["name"] for _, r in parts["held-out"] if r.get("kind") == "train" and "step_seconds" in r["measured"]} == held
    assert {r["name"] for _, r in parts["fit"]} == set(train) - held
    assert len(parts["fit"]) + len(parts["held-out"]) == len(recs)


def test_stalled_runs_are_those_slower_per_micro_batch_than_the_threshold(tmp_path):
    """20 copies of one Playbook run: 6 measured 0.5 s per micro-batch slower than their predicted
    step (a stall), 14 only 0.1 s slower (residuals); the section counts the 6, and the error of
    the others is 0.1 s x micro-batches / predicted."""
    import json

    from costmodel.validate import validate_records
    from costmodel.validation_page import STALL_S_PER_MICROBATCH, stall_lines

    assert 0.1 < STALL_S_PER_MICROBATCH < 0.5
    src = Path(__file__).resolve().parents[1] / "data" / "samples" / "playbook-nanotron-8gpus.jsonl"
    rec = json.loads(src.read_text().splitlines()[0])
    pred = validate_records([("x", rec)]).cases[0].predicted
    n_micro = rec["global_batch"] // (rec["micro_batch"] * rec["parallel"]["dp"])
    lines = []
    for i in range(20):
        extra = (0.5 if i < 6 else 0.1) * n_micro
        lines.append(json.dumps(dict(rec, name=f"run{i}", measured={"step_seconds": pred + extra})))
    f = tmp_path / "runs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = "\n".join(stall_lines([str(f)], root=tmp_path))
    row = next(x for x in out.splitlines() if x.startswith("| all |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["20", "6"]
    others = 0.1 * n_micro / (pred + 0.1 * n_micro)
    assert float(cells[4].rstrip("%")) == pytest.approx(100 * others, abs=0.06)
