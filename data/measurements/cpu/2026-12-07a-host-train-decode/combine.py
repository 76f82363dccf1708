"""The run's two rounds as one: each step's least-disturbed time over both rounds (records.jsonl)
and the numpy calibration fitted on both rounds' kernel records, each case's fastest round
(calibration.yaml, `calibrate --round-stat min`). Other processes on the shared host only ever add
time (costmodel.bench.records.merge_rounds), so both sides keep their fastest measurement. Raw
files are read, never changed. Run from the repository root:

    python data/measurements/cpu/<run>/combine.py data/measurements/cpu/<run>
"""
import json
import subprocess
import sys
from pathlib import Path

d = Path(sys.argv[1])
kernels, steps = [], {}
for i in (1, 2):
    kernels += [dict(json.loads(l), round=i) for l in (d / f"calibration-{i}.jsonl").read_text().splitlines() if l.strip()]
    for l in (d / f"records-{i}.jsonl").read_text().splitlines():
        if l.strip():
            r = json.loads(l)
            steps.setdefault(r["name"], []).append((i, r))
(d / "calibration-rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kernels))
out = []
for name, rs in steps.items():
    i, best = min(rs, key=lambda ir: ir[1]["measured"]["step_seconds"])
    rec = dict(best)
    rec["measured"] = dict(best["measured"], round=i,
                           rounds_step_seconds=[r["measured"]["step_seconds"] for _, r in rs],
                           stat="thread CPU time, min over both rounds' round medians (records-1/2.jsonl)")
    out.append(rec)
(d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
subprocess.run([sys.executable, "cli.py", "calibrate", "--records", str(d / "calibration-rounds.jsonl"),
                "--round-stat", "min", "--out", str(d / "calibration.yaml"), "--no-progress"], check=True)
