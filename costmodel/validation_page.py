"""The accuracy page (docs/validation.md): predicted against measured on every shipped record file,
per file and metric, with the records that fitted a constant and the held-out ones apart.

    python -m costmodel.validation_page > docs/validation.md        # every file, as CI checks it
    costmodel validate --markdown FILE.jsonl ...                     # the same table for some files

Which records of a file fitted what is data: ``data/validation-splits.yaml``. A file it does not
name counts as held out (nothing shipped was fitted on a user's file).
"""
from __future__ import annotations

import fnmatch
import statistics
from pathlib import Path

from .specs import package_data_dir, read_yaml

SPLITS_FILE = "validation-splits.yaml"
SPLIT_KINDS = ("held-out", "fit", "every-third", "same-as")
REGENERATE = "python -m costmodel.validation_page > docs/validation.md"


def root_dir() -> Path:
    """The directory the paths of the splits file are relative to (a checkout's root, or the
    installed package's data directory)."""
    return package_data_dir("data").parent


def load_splits() -> dict:
    """``data/validation-splits.yaml``: {"files": {path: entry}, "not_validated": {pattern: reason}}."""
    d = read_yaml(package_data_dir("data") / SPLITS_FILE)
    return {"files": d.get("files") or {}, "not_validated": d.get("not_validated") or {}}


def shipped_record_files(root: Path | None = None) -> list[str]:
    """Every ``*.jsonl`` under data/ that is not listed as not validated, relative to ``root``."""
    root = root or root_dir()
    skip = list(load_splits()["not_validated"])
    out = []
    for p in sorted((root / "data").rglob("*.jsonl")):
        rel = p.relative_to(root).as_posix()
        if not any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in skip):
            out.append(rel)
    return out


def _every_third_eligible(rec: dict) -> bool:
    """costmodel/bench/fit_host.py's candidates: single-GPU train and decode steps with a measured
    time, and infer records that did not run out of memory."""
    m = rec.get("measured") or {}
    if rec.get("kind") in ("train", "decode_step"):
        return (rec.get("devices") or 1) == 1 and isinstance(m.get("step_seconds"), (int, float))
    return rec.get("kind") == "infer" and not m.get("oom")


def split_records(records: list[tuple[str, dict]], entry: dict | None) -> dict[str, list[tuple[str, dict]]]:
    """{"fit": [...], "held-out": [...]} of a file's records under its splits entry."""
    split = (entry or {}).get("split", "held-out")
    if split not in SPLIT_KINDS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLIT_KINDS)}")
    if split == "same-as":  # copies of records of other files: each keeps its source record's part
        from .validate import read_records

        entries, fit_names = load_splits()["files"], set()
        for src in entry["same_as"]:
            fit_names |= {r.get("name") for _, r in
                          split_records(read_records(root_dir() / src), entries.get(src))["fit"]}
        return {"fit": [r for r in records if r[1].get("name") in fit_names],
                "held-out": [r for r in records if r[1].get("name") not in fit_names]}
    if split not in ("every-third",):
        return {"fit": records if split == "fit" else [], "held-out": records if split == "held-out" else []}
    also = [s.lower() for s in (entry or {}).get("also_fit", [])]
    others = (entry or {}).get("others", "held-out")
    parts: dict[str, list] = {"fit": [], "held-out": []}
    for kind in (entry or {}).get("kinds", ("train", "infer")):
        cand = sorted((rec.get("name", ""), i) for i, (_, rec) in enumerate(records)
                      if rec.get("kind") == kind and _every_third_eligible(rec))
        for j, (_, i) in enumerate(cand):
            parts["held-out" if j % 3 == 2 else "fit"].append(records[i])
    chosen = {id(r) for p in parts.values() for r in p}
    for r in records:
        if id(r) not in chosen:
            name = str(r[1].get("name", "")).lower()
            parts["fit" if others == "fit" or any(s in name for s in also) else "held-out"].append(r)
    return parts


def _stats(errs: list[float]) -> str:
    if not errs:
        return "-"
    a = [abs(e) for e in errs]
    return f"{len(a)}: {statistics.fmean(a):.1%} / {statistics.median(a):.1%}"


def record_label(rec: dict) -> tuple[str, str]:
    """(hardware, framework) a record is summarised under: kernels as "kernels", serve records by
    their engine, steps by the framework profile validate times them with (published records that
    name none are timed as Megatron-LM)."""
    from .errors import InputError
    from .frameworks import resolve

    hw = str(rec.get("hardware") or "-")
    kind = rec.get("kind")
    if kind == "kernel":
        return hw, "kernels"
    if kind == "serve":
        return hw, str(rec.get("engine") or "-")
    fw = rec.get("framework")
    if not fw:  # decode steps time no framework; published steps are timed as Megatron-LM
        return hw, "megatron (default)" if kind == "published" else "-"
    if isinstance(fw, str) and fw.lower().startswith(("deepspeed", "megatron")):
        fw = fw.lower().split()[0].split("-")[0]
    try:
        return hw, resolve(fw).id
    except InputError:
        return hw, str(fw).split()[0]


def file_rows(path: str, entry: dict | None, lib=None, by_label: dict | None = None, cases_out: list | None = None
              ) -> list[tuple[str, list[float], list[float]]]:
    """(kind.metric, fit errors, held-out errors) per metric of one file; boolean metrics (fits)
    count a wrong answer as error 1. ``by_label``: also collects the errors per (hardware,
    framework, kind.metric) into it (record_label); ``cases_out``: every case, appended to it."""
    from .validate import read_records, validate_records

    parts = split_records(read_records(path), entry)
    per: dict[str, dict[str, list[float]]] = {}
    for part, recs in parts.items():
        if not recs:
            continue
        groups: dict[tuple[str, str], list] = {}
        for r in recs:
            groups.setdefault(record_label(r[1]) if by_label is not None else ("", ""), []).append(r)
        for label, group in groups.items():
            cases = validate_records(group, lib).cases
            if cases_out is not None:
                cases_out.extend(cases)
            for c in cases:
                key = f"{c.kind}.{c.metric}"
                per.setdefault(key, {"fit": [], "held-out": []})[part].append(c.rel_error)
                if by_label is not None:
                    by_label.setdefault((*label, key), {"fit": [], "held-out": []})[part].append(c.rel_error)
    return [(k, v["fit"], v["held-out"]) for k, v in sorted(per.items())]


# A training run measured more than this much slower or faster per micro-batch than its estimate is
# reported as a missed stall (stall_lines). On the Ultra-Scale Playbook runs the excess of measured
# over predicted per micro-batch, without stalls in the model, has two modes: within +-0.25 s (the
# model's residuals) and 0.35-2 s (runs slowed 2-20x by stalls); 0.3 s sits in the empty valley.
STALL_S_PER_MICROBATCH = 0.3


def stall_lines(files: list[str], lib=None, root: Path | None = None, cases_by_file: dict | None = None) -> list[str]:
    """Per file of multi-node training runs: by device count, the runs whose measured step differs
    from the prediction by more than STALL_S_PER_MICROBATCH per micro-batch (a stall the estimate
    left out, or one it included that the run did not have), and the mean error with and without
    them. A diagnostic of the measurements, not a correction: the tables above keep them.
    ``cases_by_file``: the files' cases already validated (file_rows), else they are validated here."""
    from .validate import ranking, read_records, summarize_ranking, validate_records

    out = []
    for f in files:
        recs = [r for r in read_records(f) if r[1].get("kind") == "train"
                and isinstance((r[1].get("measured") or {}).get("step_seconds"), (int, float))]
        if len(recs) < 20:
            continue
        micro = {}
        for _, r in recs:
            dp = (r.get("parallel") or {}).get("dp") or 1
            gb = r.get("global_batch") or r.get("micro_batch", 1) * dp
            micro[r.get("name")] = (max(1, gb // (r.get("micro_batch", 1) * dp)), r.get("devices"))
        rows: dict[int, list[tuple[float, bool]]] = {}
        if cases_by_file is not None and f in cases_by_file:
            cases = [c for c in cases_by_file[f] if c.kind == "train" and c.name in micro]
        else:
            cases = validate_records(recs, lib).cases
        others = []
        for c in cases:
            if c.metric != "step_seconds" or c.name not in micro:
                continue
            n_micro, dev = micro[c.name]
            stalled = abs(c.measured - c.predicted) / n_micro > STALL_S_PER_MICROBATCH
            rows.setdefault(dev, []).append((c.rel_error, stalled))
            if not stalled:
                others.append(c)
        if sum(st for v in rows.values() for _, st in v) < 5:
            continue
        try:
            rel = Path(f).resolve().relative_to((root or root_dir()).resolve()).as_posix()
        except ValueError:
            rel = Path(f).as_posix()
        out += [f"`{rel}`:", "", "| devices | runs | stall missed | mean error, all | mean error, the others |",
                "| ---: | ---: | ---: | ---: | ---: |"]
        for dev in sorted(rows) + ["all"]:
            v = [x for vs in rows.values() for x in vs] if dev == "all" else rows[dev]
            rest = [abs(e) for e, st in v if not st]
            out.append(f"| {dev} | {len(v)} | {sum(st for _, st in v)} | {statistics.fmean(abs(e) for e, _ in v):.1%} | "
                       + (f"{statistics.fmean(rest):.1%} |" if rest else "- |"))
        every, kept = summarize_ranking(ranking(cases)), summarize_ranking(ranking(others))
        if every.groups and kept.groups and kept.median_spearman is not None and every.median_spearman is not None:
            out += ["", f"Layouts ranked per model and device count ({kept.groups} groups): median Spearman "
                        f"{every.median_spearman:.2f} and median regret {every.median_regret:.1%} on all runs, "
                        f"{kept.median_spearman:.2f} and {kept.median_regret:.1%} on the others."]
        out.append("")
    if not out:
        return []
    return ["", "## Runs that stalled", "",
            "Training runs measured more than 0.3 s per micro-batch slower or faster than their estimate",
            "(`validation_page.STALL_S_PER_MICROBATCH`: the valley between the model's residuals and the",
            "Playbook's stalls of 0.5-2 s per micro-batch, runs 2-20x slower than their layout allows,",
            "more often the more nodes a run spans; otherwise alike runs of the same layout stalled or not).",
            "Where a profile's cluster measured such stalls (`pipeline_stall`, costmodel.cluster), the",
            "estimate reports the likelier outcome for the node count (steptime.pipeline_stall); which run",
            "of a layout stalls, no mechanism says. These are the runs whose outcome it missed; the tables",
            "above count them.", ""] + out


def summary_lines(by_label: dict) -> list[str]:
    """The table by hardware and framework: one row per device, framework and metric of the
    timing and memory predictions (``fits`` answers are in the table per file)."""
    lines = [
        "## By hardware and framework",
        "",
        "Every shipped record file pooled by the device it ran on and the framework (or serving engine)",
        "it is timed as; kernel records are the device's microbenchmarks. The held-out column is the",
        "accuracy to expect on a new run of the same kind; the per-file table below says which files.",
        "",
        "| hardware | framework | metric | held-out: n: mean / median | fit: n: mean / median |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for (hw, fw, metric), v in sorted(by_label.items()):
        if metric.endswith(".fits"):
            continue
        lines.append(f"| {hw} | {fw} | {metric} | {_stats(v['held-out'])} | {_stats(v['fit'])} |")
    return lines + [""]


def markdown(files: list[str], lib=None, root: Path | None = None, summary: bool = False) -> str:
    """The page: one table row per file and metric; ``summary``: first the files pooled by
    hardware and framework (summary_lines)."""
    from .specs import load_library

    lib = lib or load_library()
    root = root or root_dir()
    entries = load_splits()["files"]
    lines = [
        "# Validation: how right the calculator is, on what",
        "",
        f"Generated by `{REGENERATE}` (the same table as `costmodel validate --markdown FILES`);",
        "`tests/test_validation_page.py` fails when this page differs from what the command prints.",
        "Each row is one record file and metric: the records' count, then the mean / median absolute",
        "relative error of the prediction, on all of them and on the parts that fitted a constant",
        "(\"fit\") and that did not (\"held-out\"). Which records fitted what is",
        "`data/validation-splits.yaml`; the runs are described in `data/measurements/README.md`.",
        "`fits` metrics count a wrong fits / does-not-fit answer as 100%.",
        "",
    ]
    table = [
        "| file | metric | n | mean | median | fit: n: mean / median | held-out: n: mean / median |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_label: dict | None = {} if summary else None
    cases_by_file: dict[str, list] = {}
    fitted = []
    for f in files:
        p = Path(f)
        try:
            rel = (p if p.is_absolute() else (Path.cwd() / p)).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = p.as_posix()
        entry = entries.get(rel)
        if entry and entry.get("fitted"):
            fitted.append(f"- `{rel}`: {entry['fitted']}")
        rows = file_rows(f, entry, lib, by_label, cases_by_file.setdefault(f, []))
        if not rows:
            table.append(f"| `{rel}` | (no record modelled: see `costmodel validate {rel}`) | 0 | - | - | - | - |")
        for metric, fit, held in rows:
            errs = [abs(e) for e in fit + held]
            table.append(f"| `{rel}` | {metric} | {len(errs)} | {statistics.fmean(errs):.1%} | "
                         f"{statistics.median(errs):.1%} | {_stats(fit)} | {_stats(held)} |")
    if by_label is not None:
        lines += summary_lines(by_label) + ["## By record file", ""]
    lines += table
    if fitted:
        lines += ["", "## What each fit part fitted", ""] + fitted
    if summary:
        lines += stall_lines(files, lib, root, cases_by_file)
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    root = root_dir()
    sys.stdout.write(markdown([str(root / f) for f in shipped_record_files(root)], root=root, summary=True))


if __name__ == "__main__":
    main()
