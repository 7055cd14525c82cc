"""Turn the raw MM-SP benchmark measurements into a printed table, ratios, a plot and a result file
(``longvila.leaderboards.results.write_result``, benchmark ``sp_bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

from longvila.utils import atomic_write_text, save_figure

OURS = ("zigzag_ring", "ulysses", "2d_u2r2")
METHODS = ("reference", "basic_ring", "deepspeed_ulysses", *OURS)


def _rows(raw: dict) -> list[dict]:
    rows = []
    for key, per_len in raw.items():
        if key == "reference":
            for s, m in per_len.items():
                rows.append({"world": 1, "seq_len": int(s), "method": "reference", **m})
        elif key.startswith("attention-"):
            w = int(key.split("-")[1])
            for s, methods in per_len.items():
                for name, m in methods.items():
                    rows.append({"world": w, "seq_len": int(s), "method": name, **m})
    return rows


def report(cfg: dict, raw: dict, out_dir: Path, publish: bool = False) -> dict:
    """Table (printed and ``table.md``), plot and ``sp-bench.json`` in ``out_dir``; with ``publish`` also the
    leaderboard copy (``leaderboards/results/sp-bench.json``, or ``$LONGVILA_RESULTS_DIR``)."""
    rows = _rows(raw)
    ref = {r["seq_len"]: r for r in rows if r["method"] == "reference"}
    metrics: dict[str, float] = {}
    for r in rows:
        s, w, name = r["seq_len"], r["world"], r["method"]
        for mode in ("fwd", "fwdbwd", "fwd_cpu", "fwdbwd_cpu"):
            t = r[f"{mode}_s"]
            metrics[f"time_{name}_{w}r_{s}_{mode}_s"] = round(t, 4)
            if name != "reference":
                r[f"eff_{mode}"] = ref[s][f"{mode}_s"] / (w * t)
                metrics[f"eff_{name}_{w}r_{s}_{mode}"] = round(r[f"eff_{mode}"], 3)
    by = {(r["world"], r["seq_len"], r["method"]): r for r in rows}
    for (w, s, name), r in by.items():
        if name == "zigzag_ring":
            base = by[(w, s, "basic_ring")]
            for mode in ("fwd", "fwdbwd", "fwd_cpu", "fwdbwd_cpu"):
                metrics[f"speedup_zigzag_vs_basic_{w}r_{s}_{mode}"] = round(base[f"{mode}_s"] / r[f"{mode}_s"], 3)
        if name == "ulysses":
            ds = by[(w, s, "deepspeed_ulysses")]
            for mode in ("fwd", "fwdbwd", "fwd_cpu", "fwdbwd_cpu"):
                metrics[f"speedup_ulysses_vs_deepspeed_{w}r_{s}_{mode}"] = round(ds[f"{mode}_s"] / r[f"{mode}_s"], 3)
    frames = {k: v for k, v in raw.items() if k.startswith("frames-")}
    for key, res in frames.items():
        w = key.split("-")[1]
        metrics[f"frames_max_over_mean_balanced_{w}r_ratio"] = round(res["balanced"]["max_over_mean"], 3)
        metrics[f"frames_max_over_mean_token_{w}r_ratio"] = round(res["token"]["max_over_mean"], 3)
        metrics[f"time_mmsp_step_balanced_{w}r_s"] = round(res["balanced"]["step_s"], 4)
        metrics[f"time_mmsp_step_token_{w}r_s"] = round(res["token"]["step_s"], 4)
        metrics[f"time_mmsp_step_balanced_{w}r_cpu_s"] = round(res["balanced"]["step_cpu_s"], 4)
        metrics[f"time_mmsp_step_token_{w}r_cpu_s"] = round(res["token"]["step_cpu_s"], 4)
        metrics[f"speedup_balanced_vs_token_{w}r"] = round(res["token"]["step_s"] / res["balanced"]["step_s"], 3)
        metrics[f"speedup_balanced_vs_token_{w}r_cpu"] = round(
            res["token"]["step_cpu_s"] / res["balanced"]["step_cpu_s"], 3)

    table = _table(rows, frames)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "table.md", table + "\n")
    plot = _plot(rows, out_dir / "sp-bench-times.png")
    from longvila.leaderboards.results import write_result

    path = write_result(
        out_dir / "sp-bench.json", "sp_bench", metrics, details={"rows": rows, "frames": frames}, config=cfg,
        seed=cfg.get("seed"), command="longvila " + " ".join(sys.argv[1:]) if sys.argv else None,
        plots={"times": plot},
    )
    print(f"result: {path}")
    if publish:
        published = write_result(
            "sp-bench", "sp_bench", metrics, details={"rows": rows, "frames": frames}, config=cfg,
            seed=cfg.get("seed"), command="make bench-sp", plots={"times": plot},
        )
        print(f"published: {published}")
    return {"metrics": metrics, "rows": rows, "frames": frames, "result": str(path)}


def _table(rows: list[dict], frames: dict) -> str:
    lines = ["| ranks | tokens | method | fwd+bwd CPU s | eff (CPU) fwd | eff (CPU) fwd+bwd | fwd wall s | "
             "fwd+bwd wall s | eff (wall) fwd+bwd | peak MiB/rank (max) |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (r["world"] > 1, r["world"], r["seq_len"], order.get(r["method"], 9))):
        e = {k: (f"{r[k]:.2f}" if k in r else "-") for k in ("eff_fwd_cpu", "eff_fwdbwd_cpu", "eff_fwdbwd")}
        lines.append(f"| {r['world']} | {r['seq_len']} | {r['method']} | {r['fwdbwd_cpu_s']:.3f} | {e['eff_fwd_cpu']} | "
                     f"{e['eff_fwdbwd_cpu']} | {r['fwd_s']:.3f} | {r['fwdbwd_s']:.3f} | {e['eff_fwdbwd']} | "
                     f"{max(r['peak_mib_per_rank']):.0f} |")
    if frames:
        lines += ["", "| ranks | frame sharding | encoder frames per rank | max/mean | step CPU s | step wall s |",
                  "| ---: | --- | --- | ---: | ---: | ---: |"]
        for key, res in frames.items():
            for mode in ("balanced", "token"):
                m = res[mode]
                lines.append(f"| {key.split('-')[1]} | {mode} | {m['frames_per_rank']} | {m['max_over_mean']:.2f} | "
                             f"{m['step_cpu_s']:.3f} | {m['step_s']:.3f} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r["world"] for r in rows if r["world"] > 1})
    lens = sorted({r["seq_len"] for r in rows})
    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4), squeeze=False)
    for ax, w in zip(axes[0], worlds, strict=True):
        methods = [m for m in METHODS if any(r["method"] == m and r["world"] in (1, w) for r in rows)]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            ys = [next((r["fwdbwd_cpu_s"] for r in rows if r["method"] == m and r["seq_len"] == s
                        and r["world"] == (1 if m == "reference" else w)), 0.0) for s in lens]
            ax.bar([j + i * width for j in range(len(lens))], ys, width, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lens))], [str(s) for s in lens])
        ax.set_xlabel("tokens")
        ax.set_ylabel("fwd+bwd CPU time (s), slowest rank")
        ax.set_title(f"causal attention: {w} ranks x 1 thread (reference 1 x 1)", fontsize=10)
        ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110)
