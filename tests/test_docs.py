"""The docs answer in one hop: every module of costmodel/ is named in docs/architecture.md, every
fitted constant's data entry says what it was fitted on (``source``), and every module name that
reads one is mapped to its entry in docs/calibration.md."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_every_module_is_named_in_the_architecture_page():
    text = (DOCS / "architecture.md").read_text()
    missing = [p.relative_to(ROOT / "costmodel").as_posix() for p in sorted((ROOT / "costmodel").rglob("*.py"))
               if p.name != "__init__.py" and p.name not in text]
    assert not missing, f"modules not named in docs/architecture.md: {missing}"


def _parameters():
    """(file, name, entry) of every fitted parameter: the framework profiles and data/fitted/."""
    files = sorted((ROOT / "data" / "frameworks").glob("*.yaml")) + sorted((ROOT / "data" / "fitted").glob("*.yaml"))
    for f in files:
        for name, p in (yaml.safe_load(f.read_text()).get("parameters") or {}).items():
            yield f.relative_to(ROOT).as_posix(), name, p


def _named_files_exist(text: str) -> list[str]:
    """The shipped record files and run folders a source names that are not in the tree."""
    gone = []
    for path in re.findall(r"\bdata/(?:measurements|published|samples)/[\w./*-]+", text):
        path = path.rstrip(".,;:)")
        if not list(ROOT.glob(path)):
            gone.append(path)
    return gone


def test_every_fitted_parameter_has_bounds_meaning_and_source():
    n = 0
    for f, name, p in _parameters():
        n += 1
        assert {"value", "bounds", "meaning", "source"} <= set(p), (f, name)
        lo, hi = (float(x) for x in p["bounds"])
        assert lo <= float(p["value"]) <= hi, (f, name)
        assert str(p["meaning"]).strip() and str(p["source"]).strip(), (f, name)
        assert not _named_files_exist(str(p["source"])), (f, name)
    assert n >= 40


def test_parameters_marked_not_fitted_are_what_their_mark_says():
    """``not_fitted:`` takes a parameter out of tools/mutate_constants.py's tested set, so the mark
    must be true: no entry whose source says a fit produced it carries one, and an entry marked as
    a copy of another profile's parameter holds that parameter's value (a refit of the original that
    left the copy behind would make the mark false)."""
    params = {(Path(f).stem, name): p for f, name, p in _parameters()}
    marked = {k: p for k, p in params.items() if "not_fitted" in p}
    assert len(marked) >= 8
    for (stem, name), p in marked.items():
        assert isinstance(p["not_fitted"], str) and p["not_fitted"].strip(), (stem, name)
        assert not re.match(r"\s*fitted\b", str(p["source"]), re.I), (stem, name)
        copy = re.match(r"a copy of ([\w-]+)\.yaml's (\w+)", p["not_fitted"])
        if copy:
            original = params[(copy.group(1), copy.group(2))]
            assert float(p["value"]) == float(original["value"]), (stem, name, original["value"])


def test_every_other_fitted_number_names_its_source():
    """Serving engines: the fitted MoE efficiency and the custom all-reduce table; calibration
    overlays: the record files they were fitted on; scaling laws: their paper."""
    for f in sorted((ROOT / "data" / "engines").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        if isinstance(d.get("moe_math_efficiency"), dict):
            assert d["moe_math_efficiency"].get("source"), f.name
            assert not _named_files_exist(d["moe_math_efficiency"]["source"]), f.name
        else:
            assert d.get("moe_math_efficiency") is None, f"{f.name}: a fitted moe_math_efficiency needs a source"
        if d.get("custom_allreduce"):
            assert d["custom_allreduce"].get("source"), f.name
        api = d.get("api_server_s_per_request")
        if api:  # a fitted (non-zero) API server time: a value within its bounds, what it means, where from
            assert isinstance(api, dict) and api.get("source") and api.get("meaning"), f.name
            lo, hi = api["bounds"]
            assert lo <= api["value"] <= hi, f.name
            assert not _named_files_exist(api["source"]), f.name
    for f in sorted((ROOT / "hardware" / "calibrated").glob("*.yaml")):
        records = (yaml.safe_load(f.read_text()).get("measured") or {}).get("records") or []
        assert records, f.name
        for r in records:
            assert (ROOT / r).exists() or (ROOT.parent / r).exists() or r.startswith("shared/"), (f.name, r)
    for law in yaml.safe_load((ROOT / "data" / "scaling_laws.yaml").read_text())["laws"]:
        assert str(law.get("source", "")).strip(), law.get("id")


def test_every_module_constant_read_from_data_is_mapped_in_the_calibration_guide():
    """A module-level name read from a data entry (``NAME = fitted.value(...)``) appears in
    docs/calibration.md's table beside its entry, so a reader finds the measurement in one hop."""
    guide = (DOCS / "calibration.md").read_text()
    pat = re.compile(r'^([A-Z][A-Z0-9_]+) = fitted\.value\("([^"]+)", "([^"]+)"\)', re.M)
    found = 0
    for f in sorted((ROOT / "costmodel").rglob("*.py")):
        for name, rel, key in pat.findall(f.read_text()):
            found += 1
            assert name in guide, (f.name, name)
            assert f"data/{rel}" in guide, (f.name, rel)
            assert f"`{key}`" in guide, (f.name, key)
    assert found >= 15


def test_every_function_the_formulas_page_names_exists():
    """docs/formulas.md's last column names the implementing function as `module.name`
    (`calibration.curves` a module): each must import."""
    import importlib

    rows = [line.split("|") for line in (DOCS / "formulas.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    names = {n for r in rows if len(r) >= 6 for n in re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", r[4])}
    assert len(names) > 50
    missing = []
    for name in sorted(names):
        mod, _, attr = name.rpartition(".")
        try:
            obj = importlib.import_module(f"costmodel.{mod}")
            if not hasattr(obj, attr):
                importlib.import_module(f"costmodel.{name}")
        except ImportError:
            missing.append(name)
    assert not missing, missing
