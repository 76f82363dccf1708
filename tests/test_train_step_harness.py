"""The training-step harness (costmodel/bench/train_step.py and its step_*.py modules) must run as
a file path on a GPU machine without costmodel's dependencies, and as a package module. Neither
torch nor transformers is installed here: stand-ins that define only what the modules read at
import time let the wiring be checked (every name imported between the modules exists)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stubs(tmp_path: Path) -> dict:
    (tmp_path / "torch.py").write_text('__version__ = "0.0+stub"\n')
    (tmp_path / "transformers.py").write_text('__version__ = "0.0"\n')
    return {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}


def test_harness_runs_from_a_file_path(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "costmodel" / "bench" / "train_step.py"), "--help"],
                         capture_output=True, text=True, env=_stubs(tmp_path), cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout and "--hold-outputs" in out.stdout


def test_harness_modules_import_as_a_package(tmp_path):
    code = ("import costmodel.bench.train_step as t, costmodel.bench.step_train as s, costmodel.bench.step_infer as i; "
            "assert t.run_train is s.run_train and t.run_infer is i.run_infer; print('ok')")
    env = _stubs(tmp_path)
    env["PYTHONPATH"] += ":" + str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
