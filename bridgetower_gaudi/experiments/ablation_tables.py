"""The ablation tables: per point, mean and standard deviation over seeds, the difference to its reference and whether
it exceeds the spread, as Markdown, CSV, JSON and a PNG plot."""

from __future__ import annotations

import csv
import json
import math
import os

from .ablation_grid import Point

# (column label, all_results.json key or retrieval key, scale for display)
METRICS = (
    ("ITM acc.", "eval_itm_accuracy", 100.0),
    ("MLM acc.", "eval_mlm_accuracy", 100.0),
    ("MLM acc., image-only words", "eval_mlm_attribute_accuracy", 100.0),
    ("RSUM", "rsum", 1.0),
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(args, points: list[Point], per_seed: dict, seconds: float, trained: int, reused: int) -> dict:
    """Per point: mean / std over seeds of each metric, the difference to its reference and whether it exceeds the
    spread (|difference| > std(point) + std(reference)), and the parameter counts."""
    rows = []
    stats = {}
    for point in points:
        seeds = per_seed[point.name]
        stats[point.name] = {}
        for _, key, _ in METRICS:
            values = [r[key] for r in seeds.values() if isinstance(r.get(key), (int, float))]
            if values:
                stats[point.name][key] = _mean_std(values)
    for point in points:
        seeds = per_seed[point.name]
        first = next(iter(seeds.values()), {})
        row = {
            "point": point.name,
            "setting": point.label,
            "reference": point.reference or "",
            "seeds": sorted(seeds),
            **{k: first.get(k) for k in ("bridge_params", "cross_modal_params", "total_params")},
            "run_seconds": sum(r.get("run_seconds") or 0.0 for r in seeds.values()),
            "per_seed": {str(s): {k: r.get(k) for _, k, _ in METRICS} for s, r in seeds.items()},
        }
        for _, key, _ in METRICS:
            if key not in stats[point.name]:
                continue
            mean, std = stats[point.name][key]
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
            ref = stats.get(point.reference, {}).get(key) if point.reference else None
            if ref is not None:
                delta = mean - ref[0]
                row[f"{key}_delta"] = delta
                row[f"{key}_exceeds_spread"] = len(seeds) > 1 and abs(delta) > std + ref[1]
        rows.append(row)
    return {
        "grid": args.grid,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "flags": args.run_flags,
        "config_overrides": args.config_overrides,
        "wall_seconds": seconds,
        "runs_trained": trained,
        "runs_reused": reused,
        "rows": rows,
    }


def _format(value: float, scale: float) -> str:
    return f"{value * scale:.1f}"


def _params(count) -> str:
    if count is None:
        return "-"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.1f}K" if count >= 1e3 else str(count)


def markdown_table(summary: dict) -> str:
    metrics = [m for m in METRICS if any(f"{m[1]}_mean" in r for r in summary["rows"])]
    header = ["setting", "# params (bridges)", "# params (cross-modal)"]
    for label, _, _ in metrics:
        header += [label, "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in summary["rows"]:
        cells = [row["setting"] + (" (reference)" if not row["reference"] else ""), _params(row["bridge_params"]),
                 _params(row["cross_modal_params"])]  # fmt: skip
        for _, key, scale in metrics:
            if f"{key}_mean" not in row:
                cells += ["-", "-"]
                continue
            cells.append(f"{_format(row[key + '_mean'], scale)} ± {_format(row[key + '_std'], scale)}")
            if f"{key}_delta" in row:
                mark = "*" if row[f"{key}_exceeds_spread"] else ""
                cells.append(f"{row[key + '_delta'] * scale:+.1f}{mark}")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    minutes = summary["wall_seconds"] / 60
    run_minutes = sum(r["run_seconds"] for r in summary["rows"]) / 60
    notes = [
        f"Grid `{summary['grid']}`, seeds {summary['seeds']}: mean ± std over seeds; accuracies in %, RSUM in points "
        "(sum of IR / TR @1/5/10). Δ: mean minus the reference's mean (for backbones: the same pair's METER row); "
        "* marks |Δ| > std + std of the reference (the mean ± std bands do not overlap).",
        f"Time: {minutes:.1f} min wall for this invocation ({summary['runs_trained']} runs trained, "
        f"{summary['runs_reused']} reused); the runs' own wall times sum to {run_minutes:.1f} min.",
        f"Run flags: `{' '.join(summary['flags'])}`; config overrides: `{json.dumps(summary['config_overrides'])}`.",
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def write_tables(args, points: list[Point], summary: dict) -> dict[str, str]:
    """ablation_<grid>.md / .csv / .png / .json in output_dir/<grid>/; returns their paths."""
    folder = os.path.join(args.output_dir, args.grid)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"ablation_{args.grid}")
    paths = {ext: f"{stem}.{ext}" for ext in ("md", "csv", "png", "json")}
    with open(paths["md"], "w") as f:
        f.write(markdown_table(summary))
    with open(paths["json"], "w") as f:
        json.dump(summary, f, indent=2)
    columns = ["point", "setting", "reference", "bridge_params", "cross_modal_params", "total_params", "run_seconds"]
    for _, key, _ in METRICS:
        columns += [f"{key}_mean", f"{key}_std", f"{key}_delta", f"{key}_exceeds_spread"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in summary["rows"]:
            writer.writerow({**row, "seeds": None})
    plot(summary, paths["png"])
    return paths


def plot(summary: dict, path: str) -> None:
    """One panel per metric: each point's mean with its std as an error bar; the reference bar darker."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(f"{m[1]}_mean" in r for r in summary["rows"])]
    rows = summary["rows"]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4 * max(1, len(metrics)), 0.4 * len(rows) + 2))
    axes = list(axes) if len(metrics) > 1 else [axes]
    labels = [r["setting"] for r in rows]
    for axis, (label, key, scale) in zip(axes, metrics, strict=False):
        means = [r.get(f"{key}_mean", float("nan")) * scale for r in rows]
        stds = [r.get(f"{key}_std", 0.0) * scale for r in rows]
        colors = ["tab:blue" if r["reference"] else "navy" for r in rows]
        axis.barh(range(len(rows)), means, xerr=stds, color=colors, capsize=3)
        axis.set_yticks(range(len(rows)), labels if axis is axes[0] else [""] * len(rows), fontsize=8)
        axis.invert_yaxis()
        axis.set_title(label, fontsize=9)
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            low = min(m - s for m, s in zip(means, stds, strict=True) if not math.isnan(m))
            high = max(m + s for m, s in zip(means, stds, strict=True) if not math.isnan(m))
            pad = max(0.5, 0.1 * (high - low))
            axis.set_xlim(low - pad, high + pad)
    fig.suptitle(f"ablation: {summary['grid']} (mean ± std over seeds {summary['seeds']}; dark = reference)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
