"""How far can a fitted curve predict held-back H100 GEMM shapes? (issue 5)

Run from the repository root:  python data/measurements/h100-sxm/gemm-holdout-limits/gemm_holdout_limits.py [--seeds 0,1,2,3]

Prints, for the shipped H100 calibration records (run 23e):
1. reproducibility: the same shapes timed on another H100 day (run 23z), run 23z / run 23e - 1;
2. the held-back check (calibration.holdout_check, GEMM rows) per seed for
   - ``shipped``: the shipped fit;
   - ``oracle-tiles``: wave quantisation with each shape's real cuBLAS CTA tile, read from the
     kernel names profiled in run 23n (h100-sxm-2026-11-23n-gemm-kernels.jsonl), not one fitted
     tile per dtype;
   - ``oracle-family``: the shipped fit plus, at a held-back shape, the mean residual of the
     training shapes that ran the same cuBLAS tile (the kernel-choice effect, if the choice
     were known);
   - ``shrink-to-fill``: the fitted tile halved (down to 64) while the output has fewer tiles
     than SMs (cuBLAS picks small tiles for small outputs: 23n).
The oracles use the kernel cuBLAS actually ran for the held-back shape, which a prediction for an
unmeasured shape cannot know: they bound what modelling the kernel choice could gain.
Monkeypatches costmodel.calibration's curves and fit modules for the variants; an analysis script, not a test.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

import costmodel.calibration as C
import costmodel.calibration.curves as C_curves
import costmodel.calibration.fit as C_fit
from costmodel.bench.records import read_jsonl
from costmodel.cli.common import library

HERE = Path(__file__).resolve().parent
RUN = HERE / "h100-sxm-2026-11-23e-kernels.jsonl"
OTHER_DAY = HERE / "h100-sxm-2026-11-23z-kernels.jsonl"
KERNELS = HERE / "h100-sxm-2026-11-23n-gemm-kernels.jsonl"
DTYPES = ["bf16", "fp16", "fp32", "tf32", "fp8"]


def cublas_tiles() -> dict[tuple, tuple[int, int, str]]:
    """(dtype, m, n, k) -> (tile rows, tile cols, kernel family) of the GEMM kernel run 23n profiled."""
    out = {}
    for line in KERNELS.read_text().splitlines():
        r = json.loads(line)
        name = next(k["name"] for k in r["kernels"] if "Memset" not in k["name"] and "splitKreduce" not in k["name"])
        mt = re.search(r"(?:tst|hsh|qqtst)_(\d+)x(\d+)_|tilesize(\d+)x(\d+)x|_(\d+)x(\d+)_\d+x\d+", name)
        a, b = [int(g) for g in mt.groups() if g][:2]
        family = "simt" if "simt" in name else "cutlass80" if "cutlass_80" in name else "xmma" if "xmma" in name else "nvjet"
        out[(r["dtype"], r["m"], r["n"], r["k"])] = (a, b, family)
    return out


def reproducibility() -> None:
    def load(p):
        return {(r["op"], r.get("dtype"), r.get("m"), r.get("n"), r.get("k"), r.get("bytes")): (r["s"], r.get("s_stream"))
                for r in map(json.loads, p.read_text().splitlines()) if r["op"] in ("gemm", "gemm_llm", "mem_copy", "mem_read")}
    a, b = load(RUN), load(OTHER_DAY)
    for i, tag in ((0, "isolated"), (1, "back to back")):
        d = sorted(((b[k][i] / a[k][i] - 1, k) for k in a if k in b and a[k][i] and b[k][i]), key=lambda t: -abs(t[0]))
        e = np.abs([x for x, _ in d])
        g = [(x, k) for x, k in d if k[0].startswith("gemm")]
        print(f"reproducibility {tag}: {len(d)} shapes, median |diff| {100 * np.median(e):.1f}%, "
              f"> 10%: {int((e > 0.10).sum())}, max {100 * e.max():.1f}% ({d[0][1][0]} {d[0][1][1] or ''} {d[0][1][2] or d[0][1][5]}); "
              f"GEMMs {len(g)}, > 10%: {sum(abs(x) > 0.10 for x, _ in g)}, max {100 * abs(g[0][0]):.1f}% ({' '.join(map(str, g[0][1][1:5]))})")


def check(recs, seeds, label: str) -> None:
    dev = recs[0]["hardware"]
    spec = library(None).device(dev)
    for s in seeds:
        _, iso, st = C.holdout_check(recs, seed=s, device=dev, spec=spec)
        parts = []
        for tag, res in (("isolated", iso), ("b2b", st)):
            g = [r for r in res.rows if r["family"] == "gemm"]
            worst = max(g, key=lambda r: abs(r["error"]))
            parts.append(f"{tag} max {100 * abs(worst['error']):5.1f}% ({worst['shape']})")
        print(f"  {label:15s} seed {s}: " + "; ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3")
    seeds = [int(x) for x in ap.parse_args().seeds.split(",")]
    reproducibility()
    recs = read_jsonl(str(RUN))
    tiles = cublas_tiles()
    shipped_wave, shipped_fit, shipped_log_factor = C.wave_utilisation, C.fit_gemm, C.GemmResidual.log_factor

    def use(wave, fit):  # the GEMM curve (curves) and the fit (fit) each look these names up in their module
        C_curves.wave_utilisation = C_fit.wave_utilisation = wave
        C_fit.fit_gemm = fit

    check(recs, seeds, "shipped")

    # oracle-tiles: a sentinel tile (1, j) means "dtype j's real tile per shape"
    def oracle_wave(m, n, tile, units, k=None):
        if tile is None or tile[0] != 1:
            return shipped_wave(m, n, tile, units, k)
        dt = DTYPES[tile[1] - 1]
        mm, nn, kk = np.broadcast_arrays(*(np.asarray(v, float) for v in (m, n, k)))
        out = np.array([shipped_wave(a, b, tiles[(dt, int(a), int(b), int(c))][:2], units, c)
                        if (dt, int(a), int(b), int(c)) in tiles else 1.0 for a, b, c in zip(mm.ravel(), nn.ravel(), kk.ravel())])
        return out.reshape(mm.shape) if mm.ndim else float(out[0])

    def oracle_fit(records, peaks=None, mem_bw=None):
        rows = C._gemm_obs(records)
        dts = sorted({r[3] for r in rows})
        best = C._fit_gemm_tiles(rows, dts, {d: (1, DTYPES.index(d) + 1) for d in dts}, C._units(records), peaks, mem_bw)
        best.pop("_cost"), best.pop("_x")
        res = C.fit_gemm_residual(rows, best)
        if res:
            best["residual"] = res
        return best

    use(oracle_wave, oracle_fit)
    check(recs, seeds, "oracle-tiles")
    use(shipped_wave, shipped_fit)

    # oracle-family: + mean residual of the training shapes that ran the same kernel tile and family
    def family_log_factor(self, m, n, k, dtype):
        base = shipped_log_factor(self, m, n, k, dtype)
        pts = self.points.get(dtype)
        fam = tiles.get((dtype, int(m), int(n), int(k))) if np.ndim(m) == 0 else None
        if pts is None or fam is None:
            return base
        x, num, den = pts
        keys = np.round(2.0 ** x).astype(int)
        same = np.array([tiles.get((dtype, *map(int, kk))) == fam for kk in keys]) & ~np.all(keys == [m, n, k], axis=1)
        return base + (float(num[same].sum() / (1.0 + den[same].sum())) if same.any() else 0.0)

    C.GemmResidual.log_factor = family_log_factor
    check(recs, seeds, "oracle-family")
    C.GemmResidual.log_factor = shipped_log_factor

    def shrink_wave(m, n, tile, units, k=None):
        if tile is None or not units:
            return 1.0
        m, n = np.broadcast_arrays(np.asarray(m, float), np.asarray(n, float))
        tm, tn = np.full(m.shape, float(tile[0])), np.full(m.shape, float(tile[1]))
        for _ in range(4):
            few = np.ceil(m / tm) * np.ceil(n / tn) < units
            halve_m = few & (tm > 64) & ((tm >= tn) | (tn <= 64))
            halve_n = few & ~halve_m & (tn > 64)
            tm, tn = np.where(halve_m, tm / 2, tm), np.where(halve_n, tn / 2, tn)
        t = np.ceil(m / tm) * np.ceil(n / tn)
        if k is not None:
            t = t * np.maximum(1.0, np.minimum(np.floor(units / t), np.floor(np.asarray(k, float) / C.SPLIT_K_MIN_K)))
        out = t / (np.ceil(t / units) * units)
        return out if out.ndim else float(out)

    use(shrink_wave, shipped_fit)
    check(recs, seeds, "shrink-to-fill")
    use(shipped_wave, shipped_fit)


if __name__ == "__main__":
    main()
