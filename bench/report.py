"""The table (Markdown, printed and saved), the raw JSON and the PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from . import cluster, efficiency
from .results import BY_KEY, CACHES, METRICS, PULLCACHE, Results, Summary

RATIO_KEYS = ("cached_1", "cached_8", "manifest_tag", "manifest_digest")
ABSOLUTE_KEYS = ("herd_fetches", "herd_ttfb_median", "rss_peak")


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(summary: Summary | None, failures: list[str]) -> str:
    if summary is None:
        return f"failed: {_short(failures[0])}" if failures else "—"
    text = _number(summary.median)
    if summary.n > 1:
        text += f" ({_number(summary.low)}–{_number(summary.high)})"
    if failures:
        text += f"; {len(failures)} failed: {_short(failures[0])}"
    return text


def _short(reason: str, limit: int = 90) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def table(results: Results) -> str:
    lines = [
        "| scenario | pullcache | Distribution | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for metric in METRICS:
        cells = [
            _cell(results.summary(metric.key, cache), results.failures.get(metric.key, {}).get(cache, []))
            for cache in CACHES
        ]
        if all(c == "—" for c in cells):
            continue
        ratio = results.ratio(metric.key)
        met = results.met(metric.key)
        verdict = {True: "met", False: "**SHORT**", None: "not measured" if metric.target else ""}[met]
        unit = f" ({metric.unit})" if metric.unit else ""
        lines.append(
            f"| {metric.label}{unit} | {cells[0]} | {cells[1]} | "
            f"{f'{ratio:.2f}×' if ratio is not None else '—'} | "
            f"{metric.target.text(metric.unit) if metric.target else ''} | {verdict} |"
        )
    lines += efficiency.rows(results)
    lines += cluster.workers_rows(results)
    lines += cluster.aggregate_rows(results)
    scale = results.extra.get("scale")
    if isinstance(scale, dict):
        for key, value in scale.items():
            if isinstance(value, bool):
                shown = "yes" if value else "no"
            else:
                shown = _number(value) if isinstance(value, (int, float)) else str(value)
            lines.append(f"| scale (bench/scale.py): {key.replace('_', ' ')} | {shown} | n/a | | | |")
    return "\n".join(lines)


def notes(results: Results) -> str:
    """The lines under the table: rounds, machine, load-generator ceiling, server CPU."""
    out = []
    machine = results.extra.get("machine", {})
    if machine:
        out.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    out.append(f"Rounds: {results.extra.get('rounds')}, each running every scenario on pullcache, then on "
               "Distribution; figures are the median of rounds with min–max; ratio = pullcache ÷ Distribution "
               "(medians). Lower is better for times, fetches, CPU and RSS. A cached-layer figure is the best of "
               "5 transfers within its round (one transfer lasts a fraction of a second, and other load on the "
               "machine only ever slows one down).")
    load = results.extra.get("load_average")
    if isinstance(load, dict) and "end" in load:
        out.append(f"1-minute load average {load['start']:.1f} at the start and {load['end']:.1f} at the end "
                   "(the machine is shared; on 2 cores anything above ~1 is other work competing).")
    ceiling = results.extra.get("loadgen_ceiling")
    if isinstance(ceiling, dict):
        out.append("Load generator for blobs: `bench/blobget.py` (N threads in one process; a body of "
                   "known length is received with MSG_TRUNC, never copied to user space); for manifests: "
                   "wrk -t1 -c16. Blob client ceiling against a sendfile(2) server of a file as big as the "
                   "cached layer (best of 3): " + "; ".join(
                       f"{client}: " + ", ".join(
                           f"{n} client{'s' if n != '1' else ''} {v['throughput']:.0f} MB/s "
                           f"using {v['client_cpu_per_s']:.2f} cores" for n, v in per_n.items())
                       for client, per_n in ceiling.items()) + ".")
    for note in results.extra.get("notes", []):
        out.append(str(note))
    out += cluster.workers_notes(results) + cluster.aggregate_notes(results)
    return "\n".join(f"- {line}" for line in out)


def write(results: Results, directory: Path, stamp: str, latest: str = "latest",
          with_chart: bool = True) -> dict[str, Path]:
    """Write `<stamp>.json/.md/.png` and the same as `<latest>.*`; returns the paths by name. `with_chart` False:
    no PNG (the chart shows the single caches' figures, which a run of the scale-out scenarios has none of)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    text = f"{table(results)}\n\n{notes(results)}\n"
    payload = json.dumps(results.json(), indent=2, default=str)
    for name in (stamp, latest):
        (directory / f"{name}.json").write_text(payload)
        (directory / f"{name}.md").write_text(text)
        if with_chart:
            chart(results, directory / f"{name}.png")
        written[name] = directory / f"{name}.json"
    return written


def chart(results: Results, path: Path) -> None:
    """Ratio bars with their target lines, then the absolute targets side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(ABSOLUTE_KEYS), figsize=(15, 4.8),
                             gridspec_kw={"width_ratios": [2.2] + [1] * len(ABSOLUTE_KEYS)})
    ratio_ax = axes[0]
    labels, ratios = [], []
    for i, key in enumerate(RATIO_KEYS):
        ratio = results.ratio(key)
        labels.append(BY_KEY[key].label.replace(", wrk 16 conns", "").replace(" (aggregate)", "")
                      .replace("cached 200 MiB layer", "layer").replace("manifest by ", "manifest\n"))
        ratios.append(ratio or 0)
        target = BY_KEY[key].target
        if target is not None:
            ratio_ax.hlines(target.value, i - 0.4, i + 0.4, colors="crimson", linestyles="--")
        ratio_ax.annotate(f"{ratio:.2f}×" if ratio else "n/a", (i, ratio or 1), ha="center",
                          va="bottom", fontsize=9)
        ratio_ax.bar(i, ratio or 0, color="seagreen" if results.met(key) else "darkorange")
    ratio_ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ratio_ax.axhline(1, color="grey", linewidth=0.8)
    ratio_ax.set_yscale("log")
    ratio_ax.set_ylabel("pullcache ÷ Distribution (higher is better)")
    ratio_ax.set_title("ratios; dashed: target")

    for ax, key in zip(axes[1:], ABSOLUTE_KEYS, strict=True):
        metric = BY_KEY[key]
        summaries = [results.summary(key, c) for c in CACHES]
        medians = [s.median if s else 0.0 for s in summaries]
        ax.bar([0, 1], medians, color=["seagreen" if results.met(key) else "darkorange", "steelblue"])
        for x, summary in enumerate(summaries):
            ax.annotate(_number(summary.median) if summary else "n/a", (x, summary.median if summary else 0),
                        ha="center", va="bottom", fontsize=9)
        if metric.target is not None:
            ax.axhline(metric.target.value, color="crimson", linestyle="--")
        ax.set_xticks([0, 1], [PULLCACHE, "Distribution"], fontsize=8)
        ax.set_title(metric.label.replace("cold herd (16 × uncached 200 MiB): ", "cold herd: ")
                     .replace(", 16 clients streaming the uncached 1 GiB layer", "\n(16 × cold 1 GiB)")
                     .replace("cold herd: ", "cold herd:\n"), fontsize=9)
        ax.set_ylabel(metric.unit or "count")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="seagreen", label="pullcache, target met"),
                        Patch(color="darkorange", label="pullcache, short of target"),
                        Patch(color="steelblue", label="Distribution")],
               loc="lower right", fontsize=8, ncols=3)
    fig.suptitle(f"pullcache vs CNCF Distribution (proxy mode), storage: {results.extra.get('storage', 'filesystem')}, "
                 f"{results.extra.get('rounds')} rounds")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
