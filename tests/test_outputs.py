"""Every file a command writes goes through costmodel.outputs: never inside the package or a
checkout's shipped specs, never over an input, another output or a file of another kind, checked
before the work starts and replaced only atomically after it succeeded (issue 25, data loss)."""
import json
import os
from pathlib import Path

import pytest

from costmodel import outputs
from costmodel.cli.app import main
from costmodel.errors import InputError
from costmodel.specs import package_data_dir

ROOT = Path(__file__).resolve().parents[1]
MEAS = ROOT / "data" / "measurements"
H100_RECORDS = MEAS / "h100-sxm/2026-11-23b-kernels/h100-sxm-2026-11-23b-kernels.jsonl"
_REC = {"kind": "kernel", "op": "mem_read", "bytes": 2**20, "s": 1e-5, "gbps": 104.9, "hardware": "cpu-host",
        "backend": "numpy"}


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _one_line_error(err: str, *parts: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], (p, err)


@pytest.fixture
def no_measuring(monkeypatch):
    """Benchmarks that must not run: the outputs are refused first."""
    import costmodel.bench as bench

    def boom(*a, **k):
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(bench, "run_cases", boom)


@pytest.fixture
def fake_measuring(monkeypatch):
    """A benchmark run that returns one record per case instantly (and counts its calls)."""
    import costmodel.bench as bench

    calls = []

    def run_cases(cases, **kw):
        calls.append(len(cases))
        return [dict(_REC)], []

    monkeypatch.setattr(bench, "run_cases", run_cases)
    return calls


# ------------------------------------------------------------------ protected places

def test_save_records_into_the_shipped_hardware_is_refused_before_measuring(capsys, tmp_path, no_measuring):
    spec = package_data_dir("hardware") / "h100-sxm.yaml"
    before = spec.read_bytes()
    code, _, err = run(capsys, "calibrate", "--quick", "--backend", "numpy", "--out", tmp_path / "o.yaml",
                       "--save-records", spec)
    assert code == 2
    _one_line_error(err, "h100-sxm.yaml", "'save-records'", "refusing to write inside the shipped hardware/ directory")
    assert spec.read_bytes() == before


@pytest.mark.parametrize("target", ["hardware/h100-sxm.yaml", "hardware/nodes/dgx-h100.yaml", "data/models/x.yaml",
                                    "plans/p.yaml", "costmodel/x.jsonl"])
def test_bench_out_into_shipped_places_is_refused(capsys, target, no_measuring):
    p = ROOT / target
    before = p.read_bytes() if p.exists() else None
    code, _, err = run(capsys, "bench", "--quick", "--backend", "numpy", "--out", p)
    assert code == 2
    _one_line_error(err, "'out'", "refusing to write inside")
    assert (p.read_bytes() if p.exists() else None) == before


def _fake_checkout(tmp_path: Path) -> Path:
    """A costmodel source checkout that the running package is not installed from (the README's
    `pip install .` then `costmodel calibrate ... --out hardware/h100-sxm.yaml` in the checkout)."""
    root = tmp_path / "checkout"
    (root / "hardware" / "nodes").mkdir(parents=True)
    (root / "hardware" / "calibrated").mkdir()
    (root / "costmodel").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "costmodel"\n')
    for rel in ("hardware/h100-sxm.yaml", "hardware/nodes/dgx-h100.yaml"):
        (root / rel).write_bytes((ROOT / rel).read_bytes())
    return root


@pytest.mark.parametrize("rel", ["hardware/h100-sxm.yaml", "hardware/nodes/dgx-h100.yaml"])
def test_calibrate_never_overwrites_another_checkouts_specs(capsys, tmp_path, rel):
    root = _fake_checkout(tmp_path)
    target = root / rel
    before = target.read_bytes()
    code, _, err = run(capsys, "calibrate", "--records", H100_RECORDS, "--out", target)
    assert code == 2
    _one_line_error(err, "'out'", "shipped hardware/ directory of the costmodel checkout")
    assert target.read_bytes() == before
    # the checkout's calibrated/ slot of the same device takes the overlay
    assert outputs.check_output(root / "hardware" / "calibrated" / "h100-sxm.yaml", "overlay", device="h100-sxm")


def test_installed_package_data_is_protected(tmp_path, monkeypatch):
    """An installed package (costmodel/_data/...): only hardware/calibrated/<device>.yaml takes an overlay."""
    pkg = tmp_path / "site" / "costmodel"
    (pkg / "_data" / "hardware" / "calibrated").mkdir(parents=True)
    monkeypatch.setattr(outputs, "_package_dir", lambda: pkg)
    with pytest.raises(InputError, match="installed costmodel package"):
        outputs.check_output(pkg / "_data" / "hardware" / "h100-sxm.yaml", "overlay")
    with pytest.raises(InputError, match="installed costmodel package"):
        outputs.check_output(pkg / "_data" / "hardware" / "calibrated" / "h100-sxm.yaml", "records")
    with pytest.raises(InputError, match="costmodel package"):
        outputs.check_output(pkg / "cli" / "x.png", "plot")
    assert outputs.check_output(pkg / "_data" / "hardware" / "calibrated" / "h100-sxm.yaml", "overlay", device="h100-sxm")


# ------------------------------------------------------------------ overlays of another device

def test_overlay_of_another_device_never_replaces_one_or_takes_its_name(capsys, tmp_path):
    cal = tmp_path / "calibrated"
    cal.mkdir()
    code, _, err = run(capsys, "calibrate", "--records", H100_RECORDS, "--out", cal / "h200-sxm.yaml")
    assert code == 2
    _one_line_error(err, "'out'", "'h200-sxm'", "'h100-sxm'")
    assert not (cal / "h200-sxm.yaml").exists()
    other = tmp_path / "o.yaml"
    other.write_text((ROOT / "hardware" / "calibrated" / "h200-sxm.yaml").read_text())
    before = other.read_bytes()
    code, _, err = run(capsys, "calibrate", "--records", H100_RECORDS, "--out", other)
    assert code == 2
    _one_line_error(err, "holds the overlay of 'h200-sxm'")
    assert other.read_bytes() == before
    # the same device's overlay is replaced
    same = tmp_path / "same.yaml"
    same.write_text((ROOT / "hardware" / "calibrated" / "h100-sxm.yaml").read_text())
    code, _, err = run(capsys, "calibrate", "--records", H100_RECORDS, "--out", same, "--json")
    assert code == 0, err
    assert "n_records" in same.read_text()


def test_fresh_calibration_checks_the_device_before_measuring(capsys, tmp_path, no_measuring):
    cal = tmp_path / "calibrated"
    cal.mkdir()
    code, _, err = run(capsys, "calibrate", "--quick", "--backend", "numpy", "--out", cal / "h100-sxm.yaml")
    assert code == 2
    _one_line_error(err, "'cpu-host'", "'h100-sxm'")


# ------------------------------------------------------------------ files that are not ours

def test_outputs_never_replace_a_file_of_another_kind(capsys, tmp_path, no_measuring):
    spec = tmp_path / "my-spec.yaml"
    spec.write_text((ROOT / "hardware" / "h100-sxm.yaml").read_text())
    before = spec.read_bytes()
    for args in (("bench", "--quick", "--backend", "numpy", "--out", spec),
                 ("calibrate", "--quick", "--backend", "numpy", "--out", tmp_path / "o.yaml", "--save-records", spec),
                 ("calibrate", "--records", H100_RECORDS, "--out", spec),
                 ("train", "llama-110m", "--plot", spec)):
        code, _, err = run(capsys, *args)
        assert code == 2, args
        _one_line_error(err, "my-spec.yaml", "refusing to replace it")
    assert spec.read_bytes() == before


def test_an_output_is_never_an_input_or_another_output(capsys, tmp_path, no_measuring):
    recs = tmp_path / "r.jsonl"
    recs.write_text(H100_RECORDS.read_text())
    code, _, err = run(capsys, "calibrate", "--records", recs, "--out", recs)
    assert code == 2
    _one_line_error(err, "one of the --records inputs")
    o = tmp_path / "o.yaml"
    code, _, err = run(capsys, "calibrate", "--quick", "--backend", "numpy", "--out", o, "--save-records", o)
    assert code == 2
    _one_line_error(err, "--save-records output")
    assert recs.read_text() == H100_RECORDS.read_text()


@pytest.mark.parametrize("args", [
    ("bench", "--quick", "--backend", "numpy", "--out", "{d}"),
    ("calibrate", "--records", str(H100_RECORDS), "--out", "{d}"),
    ("calibrate", "--quick", "--backend", "numpy", "--out", "{d}/o.yaml", "--save-records", "{d}"),
    ("fit-profile", str(ROOT / "data" / "measurements" / "h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl"), "--framework", "pytorch", "--out", "{d}"),
    ("train", "llama-110m", "--plot", "{d}"),
])
def test_a_directory_as_output_is_a_one_line_error(capsys, tmp_path, args, no_measuring):
    code, _, err = run(capsys, *(a.format(d=tmp_path) for a in args))
    assert code == 2
    _one_line_error(err, "is a directory")


def test_an_unwritable_directory_is_refused_before_measuring(capsys, tmp_path, monkeypatch, no_measuring):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", denied)
    for args in (("bench", "--quick", "--backend", "numpy", "--out", tmp_path / "k.jsonl"),
                 ("calibrate", "--quick", "--backend", "numpy", "--out", tmp_path / "o.yaml"),
                 ("calibrate", "--records", H100_RECORDS, "--out", tmp_path / "o.yaml")):
        code, _, err = run(capsys, *args)
        assert code == 2
        _one_line_error(err, "cannot write in its directory: Permission denied")


def test_a_read_only_output_is_not_replaced(tmp_path):
    p = tmp_path / "k.jsonl"
    p.write_text(json.dumps(_REC) + "\n")
    p.chmod(0o444)
    if os.access(p, os.W_OK):  # root writes anything
        pytest.skip("running as a user that may write read-only files")
    with pytest.raises(InputError, match="read-only"):
        outputs.check_output(p, "records")


# ------------------------------------------------------------------ atomic replacement after the work

def test_bench_keeps_the_old_file_until_the_run_succeeded(capsys, tmp_path, monkeypatch):
    import costmodel.bench as bench

    out = tmp_path / "kernels.jsonl"
    old = json.dumps(dict(_REC, s=1.0)) + "\n"
    out.write_text(old)

    def interrupted(cases, **kw):
        assert out.read_text() == old  # still there while measuring
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_cases", interrupted)
    code, _, _ = run(capsys, "bench", "--quick", "--backend", "numpy", "--ops", "mem_read", "--out", out)
    assert code == 130
    assert out.read_text() == old and sorted(tmp_path.iterdir()) == [out]  # no partial file either

    monkeypatch.setattr(bench, "run_cases", lambda cases, **kw: ([dict(_REC)], []))
    code, _, err = run(capsys, "bench", "--quick", "--backend", "numpy", "--ops", "mem_read", "--out", out)
    assert code == 0, err
    assert out.read_text() != old and json.loads(out.read_text().splitlines()[0])["s"] == _REC["s"]
    assert sorted(tmp_path.iterdir()) == [out]


def test_bench_with_no_records_leaves_the_old_file(capsys, tmp_path, monkeypatch):
    import costmodel.bench as bench

    out = tmp_path / "kernels.jsonl"
    out.write_text(json.dumps(_REC) + "\n")
    before = out.read_bytes()
    monkeypatch.setattr(bench, "run_cases", lambda cases, **kw: ([], ["mem_read: failed"]))
    code, _, _ = run(capsys, "bench", "--quick", "--backend", "numpy", "--ops", "mem_read", "--out", out)
    assert code == 1 and out.read_bytes() == before


def test_bench_default_output_is_never_replaced_unnamed(capsys, tmp_path, monkeypatch, no_measuring):
    monkeypatch.chdir(tmp_path)
    Path("kernels.jsonl").write_text(json.dumps(_REC) + "\n")
    code, _, err = run(capsys, "bench", "--quick", "--backend", "numpy")
    assert code == 2
    _one_line_error(err, "kernels.jsonl", "--out")


def test_save_records_are_written_whole_after_the_benchmarks(capsys, tmp_path, fake_measuring):
    saved = tmp_path / "saved.jsonl"
    code, _, err = run(capsys, "calibrate", "--quick", "--backend", "numpy", "--ops", "mem_read", "--out",
                       tmp_path / "o.yaml", "--save-records", saved, "--json")
    assert fake_measuring
    assert json.loads(saved.read_text().splitlines()[0])["op"] == "mem_read"
    assert code in (0, 2), err  # one record may be too few to fit; the records are kept either way


def test_scratch_file_is_checked_before_measuring(capsys, tmp_path, no_measuring):
    existing = tmp_path / "scratch.bin"
    existing.write_bytes(b"keep")
    code, _, err = run(capsys, "bench", "--quick", "--backend", "numpy", "--out", tmp_path / "k.jsonl",
                       "--scratch", existing)
    assert code == 2 and existing.read_bytes() == b"keep"
    _one_line_error(err, "'scratch'", "already exists")


def test_plot_over_an_old_plot_is_replaced_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    from costmodel import plots

    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG old")
    plt = plots._pyplot()
    fig, _ = plt.subplots()
    plots._save(fig, plt, png)
    assert png.read_bytes().startswith(b"\x89PNG") and png.read_bytes() != b"\x89PNG old"
    assert sorted(tmp_path.iterdir()) == [png]


def test_check_junit_never_replaces_a_plan_and_replaces_an_old_report(capsys, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: llama-110m\nhardware: h100-sxm\ntraining: {}\nlimits: {min_mfu: 0.01}\n")
    before = plan.read_bytes()
    code, _, err = run(capsys, "check", plan, "--junit", plan)
    assert code == 2 and plan.read_bytes() == before
    _one_line_error(err, "'junit'", "one of the --plans inputs")
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    code, _, err = run(capsys, "check", plan, "--junit", other)
    assert code == 2 and other.read_text() == "keep me"
    report = tmp_path / "report.xml"
    code, _, _ = run(capsys, "check", plan, "--no-search", "--junit", report)
    first = report.read_text()
    assert code in (0, 1) and "<testsuite" in first
    code, _, _ = run(capsys, "check", plan, "--no-search", "--junit", report)
    assert code in (0, 1) and report.read_text() == first and sorted(tmp_path.iterdir()) == [other, plan, report]
