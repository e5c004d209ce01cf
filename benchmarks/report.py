"""A benchmark report as people read it: a markdown table and PNG plots, from the JSON a run wrote.

    python -m benchmarks.report bench/efficientnet-lite0-2000.json --out docs/benchmarks

Plots (matplotlib, the ``bench`` extra): images/s of every scenario, end to end (what a user waits, start-up
included) beside once running, against the machine limit; and the peak memory of each scenario's process tree.
For a serving report: requests/s per concurrency of the Serve app and its peer, and their latency histograms.
``docs/performance.md`` includes the tables; ``notebooks/03_performance.ipynb`` draws the same plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LABELS = {
    "plain_loop": "plain loop (Pillow + ORT, 1 process)",
    "ray_data_textbook": "Ray Data textbook recipe",
    "daft": "Daft, native runner",
    "preprocess_only": "preprocess only (all cores)",
    "inference_only": "inference only (all cores)",
    "streamscore": "streamscore score",
    "streamscore_ray": "streamscore score --executor ray",
}


def _scored(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenarios that score end to end (not the two stage-alone measurements that give the limit)."""
    return [r for r in report["results"] if r["name"] not in ("preprocess_only", "inference_only") and "error" not in r]


def markdown_table(report: dict[str, Any], command: str) -> str:
    limit = report.get("machine_limit_images_per_s")
    lines = [
        f"{report['model']}, {report['images']} images ({report['input_format']}), {report['cpu_count']} CPUs, "
        f"machine limit {limit:.1f} images/s"
        if limit
        else f"{report['model']}, {report['images']} images",
        "",
        "| scenario | wall s (what a user waits) | images/s end to end | x limit | images/s once running | peak memory MB (tree PSS) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {LABELS.get(r['name'], r['name'])} | error: {r['error'][:80]} | | | | |")
            continue
        end_to_end = r.get("end_to_end_images_per_s")
        running = r.get("steady_images_per_s") or r.get("images_per_s")
        ratio = f"{end_to_end / limit:.2f}" if limit and end_to_end else "-"
        lines.append(
            f"| {LABELS.get(r['name'], r['name'])} | {r.get('wall_s', 0):.1f} | {end_to_end or 0:.1f} | {ratio} | "
            f"{running or 0:.1f} | {r.get('peak_pss_mb', 0):.0f} |"
        )
    if stages := report.get("stages_ms_per_image"):
        lines += [
            "",
            f"One core, one image at a time, ms per image: {_stage_line(stages)} "
            f"(sum {sum(stages.values()):.1f} ms; `benchmarks/stages.py`).",
        ]
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def _stage_line(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f}" for name, ms in stages.items())


def plot_stages(report: dict[str, Any], axis: Any) -> None:
    """Milliseconds per image of each stage on one core, stacked in pipeline order."""
    left = 0.0
    for name, ms in report["stages_ms_per_image"].items():
        axis.barh([0], [ms], left=left, label=f"{name} {ms:.1f}")
        left += ms
    axis.set_yticks([])
    axis.set_xlabel("ms per image on one core")
    axis.set_title("where an image's time goes")
    axis.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.35))


def plot_throughput(report: dict[str, Any], axis: Any) -> None:
    """Images/s end to end and once running, per scenario, with the machine limit as a line."""
    rows = _scored(report)
    names = [LABELS.get(r["name"], r["name"]) for r in rows]
    positions = range(len(rows))
    end_to_end = [r.get("end_to_end_images_per_s") or 0 for r in rows]
    running = [r.get("steady_images_per_s") or r.get("images_per_s") or 0 for r in rows]
    axis.barh([p + 0.2 for p in positions], end_to_end, height=0.4, label="end to end (start-up included)")
    axis.barh([p - 0.2 for p in positions], running, height=0.4, label="once running")
    if limit := report.get("machine_limit_images_per_s"):
        axis.axvline(limit, color="black", linestyle="--", label=f"machine limit {limit:.0f}")
    axis.set_yticks(list(positions), names)
    axis.set_xlabel("images/s")
    axis.set_title(f"{report['model']}, {report['images']} images, {report['cpu_count']} CPUs")
    axis.legend(loc="lower right", fontsize=8)


def plot_memory(report: dict[str, Any], axis: Any) -> None:
    rows = _scored(report)
    axis.barh([LABELS.get(r["name"], r["name"]) for r in rows], [r.get("peak_pss_mb") or 0 for r in rows])
    axis.set_xlabel("peak memory of the process tree, MB (PSS)")
    axis.set_title("memory")


SERVING_LABELS = {
    "streamscore": "streamscore serve",
    "peer": "FastAPI + ORT (uvicorn workers)",
    "peer_on_serve": "the same FastAPI app on Serve",
    "peer_on_serve_bare": "the same function, bare on Serve",
}


def plot_requests(report: dict[str, Any], axis: Any) -> None:
    """Requests/s per concurrency, the apps side by side (medians over rounds)."""
    rows = report["summary"]
    positions = range(len(rows))
    apps = [app for app in SERVING_LABELS if f"{app}_requests_per_s" in rows[0]]
    width = 0.8 / len(apps)
    for k, app in enumerate(apps):
        offset = (k - (len(apps) - 1) / 2) * width
        axis.bar(
            [p + offset for p in positions],
            [r[f"{app}_requests_per_s"] for r in rows],
            width,
            label=SERVING_LABELS[app],
        )
    axis.set_xticks(list(positions), [f"{r['concurrency']} clients" for r in rows])
    axis.set_ylabel("requests/s (median of rounds)")
    axis.set_title(f"{report['model']}, {report['cpu_count']} CPUs, closed loop")
    axis.legend(fontsize=8)


def plot_latency_histograms(report: dict[str, Any], axes: list[Any]) -> None:
    """One panel per concurrency: the latency distribution of every request of every round, both apps."""
    edges = report["histogram_edges_ms"]
    for axis, row in zip(axes, report["summary"], strict=True):
        c = str(row["concurrency"])
        for app in [a for a in SERVING_LABELS if a in report["histograms"]]:
            counts = report["histograms"][app][c]
            total = sum(counts) or 1
            axis.stairs([n / total for n in counts], edges, label=SERVING_LABELS[app], fill=app == "peer", alpha=0.6)
        axis.set_xscale("log")
        axis.set_xlabel("latency, ms")
        axis.set_title(f"{c} clients")
    axes[0].set_ylabel("share of requests")
    axes[0].legend(fontsize=7)


def write_report(report_path: Path, out_dir: Path, command: str) -> list[Path]:
    """``<stem>.md`` and ``<stem>.png`` beside each other in ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(report_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / f"{report_path.stem}.md"
    if report.get("kind") == "serving":
        from benchmarks.serving import serving_table

        table.write_text(serving_table(report | {"command": command}) + "\n", encoding="utf-8")
        n = len(report["summary"])
        figure, axes = plt.subplots(1, n + 1, figsize=(4 * (n + 1), 3.8))
        plot_requests(report, axes[0])
        plot_latency_histograms(report, list(axes[1:]))
    else:
        table.write_text(markdown_table(report, command) + "\n", encoding="utf-8")
        stages = "stages_ms_per_image" in report
        figure, axes = plt.subplots(
            1,
            3 if stages else 2,
            figsize=(19 if stages else 13, 0.6 * len(_scored(report)) + 2.5),
            width_ratios=(3, 2, 2) if stages else (3, 2),
        )
        plot_throughput(report, axes[0])
        plot_memory(report, axes[1])
        axes[1].set_yticks([])
        if stages:
            plot_stages(report, axes[2])
    figure.tight_layout()
    picture = out_dir / f"{report_path.stem}.png"
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return [table, picture]


def models_table(reports: list[dict[str, Any]]) -> str:
    """One row per batch report (a model or its INT8 version): the machine limit, streamscore and the plain loop
    end to end and once running, and the sum of the stages on one core."""
    lines = [
        "| model | limit images/s | streamscore end to end (x limit) | once running | plain loop end to end | "
        "Daft end to end | one core, ms per image (infer) |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        by_name = {r["name"]: r for r in report["results"] if "error" not in r}
        limit = report.get("machine_limit_images_per_s") or float("nan")
        ours = by_name.get("streamscore", {})
        stages = report.get("stages_ms_per_image", {})

        ours_e2e = ours.get("end_to_end_images_per_s") or float("nan")
        lines.append(
            f"| {report['model']} | {limit:.1f} | {ours_e2e:.1f} ({ours_e2e / limit:.2f}) | "
            f"{ours.get('steady_images_per_s') or float('nan'):.1f} | {_e2e(by_name, 'plain_loop')} | "
            f"{_e2e(by_name, 'daft')} | "
            f"{sum(stages.values()):.1f} ({stages.get('infer', float('nan')):.1f}) |"
        )
    return "\n".join(lines)


def _e2e(by_name: dict[str, Any], name: str) -> str:
    value = by_name.get(name, {}).get("end_to_end_images_per_s")
    return f"{value:.1f}" if value else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="+", help="JSON reports written by python -m benchmarks --json")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--command", default="", help="the command that produced the report, for the table")
    parser.add_argument("--models-table", action="store_true", help="print one table over several batch reports")
    args = parser.parse_args(argv)
    if args.models_table:
        print(models_table([json.loads(path.read_text()) for path in args.report]))
        return
    args.report = args.report[0]
    command = args.command or json.loads(args.report.read_text()).get("command", "")
    for path in write_report(args.report, args.out, command):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
