"""`tvmshuffle compare`'s report: its table, its JSON, and the files `-o` writes (report.md,
report.json, speedup.png: FLOPs against latency, or against instructions counted on an
emulated device). compare.py measures; this formats.
"""

from __future__ import annotations

import json
import os
import re

from rich.console import Console
from rich.table import Table

from .report import out


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


def compare_json(cells, config, environment: dict) -> dict:
    from . import compare

    same_machine = config.target.runs_on_host and not environment["emulated"]
    over = {b: compare.speedups(cells, b, same_machine) for b in ("alexnet", "mobilenet_v1_1.0")}
    rows = []
    for cell in cells:
        key = (cell.model, cell.size)
        paper = compare.PAPER_SD820_MS.get(cell.model, (None, {}))[1].get(tuple(cell.size))
        rows.append({
            "model": cell.model, "size": _size(cell.size), "mflops": round(cell.macs / 1e6, 2),
            "latency_ms": cell.latency_ms, "max_abs_err": cell.max_abs_err,
            "tuned_kernels": cell.tuned_kernels, "default_kernels": cell.default_kernels,
            "kernels": cell.kernels,
            "measured_elsewhere": cell.measured_elsewhere,
            "peers_ms": cell.peers_ms, "error": cell.error, "paper_sd820_ms": paper,
            "instructions": cell.instructions, "fma_lane_use": cell.fma_lane_use,
            "speedup_over": {b: over[b].get(key) for b in over},
        })
    return {"environment": environment, "rows": rows, "measured_by": compare.measured_by(cells),
            "flops_to_speed": compare.flops_to_speed(cells)}


def compare_table(data: dict, console: Console | None = None) -> None:
    console = console or out
    env = data["environment"]
    by_count = data.get("measured_by") == "instructions"
    table = Table(title=f"FLOPs vs measured latency on {env['device']} ({env['threads']} "
                        f"thread(s){', EMULATED: timings mean nothing' if env['emulated'] else ''})"
                        "; speedups: theoretical / measured (efficiency)"
                        + (", measured by instructions counted on the emulated device"
                           if by_count else ""))
    for column in ("model", "size", "MFLOPs",
                   "tvmshuffle M instructions (FMA lane use)" if by_count else "tvmshuffle ms",
                   "tuned", "host PyTorch ms",
                   "host ORT ms", "paper SD820 ms", "vs AlexNet", "vs MobileNet"):
        table.add_column(column, justify="left" if column in ("model", "size") else "right",
                         no_wrap=column in ("model", "size"))

    def speed(entry):
        if not entry:
            return "-"
        measured = f"{entry['measured']:.1f}x" if entry["measured"] else "?"
        eff = f" ({entry['efficiency']:.2f})" if entry["efficiency"] else ""
        fastest = (f"; {entry['measured_vs_fastest']:.1f}x "
                   f"({entry['efficiency_vs_fastest']:.2f}) vs its fastest engine "
                   f"({entry['fastest_engine']})" if entry.get("measured_vs_fastest") else "")
        return f"{entry['theoretical']:.1f}x / {measured}{eff}{fastest}"

    for row in data["rows"]:
        peers = row["peers_ms"] or {}
        latency = (f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None
                   else "[red]missing[/red]")
        if by_count:
            lanes = row.get("fma_lane_use")
            latency = (f"{row['instructions'] / 1e6:.1f} ({100 * lanes:.0f}%)" if lanes
                       else f"{row['instructions'] / 1e6:.1f}" if row.get("instructions")
                       else "[red]not counted[/red]")
        table.add_row(row["model"], row["size"], f"{row['mflops']:.0f}", latency,
                      f"{row['tuned_kernels']}/{row['kernels']}"
                      + (f" +{row['default_kernels']} default" if row.get("default_kernels")
                         else "")
                      + (f" ({row['measured_elsewhere']} timed elsewhere)"
                         if row.get("measured_elsewhere") else ""),
                      f"{peers['torch']:.2f}" if "torch" in peers else "-",
                      f"{peers['onnxruntime']:.2f}" if "onnxruntime" in peers else "-",
                      f"{row['paper_sd820_ms']}" if row["paper_sd820_ms"] else "-",
                      speed(row["speedup_over"]["alexnet"]),
                      speed(row["speedup_over"]["mobilenet_v1_1.0"]))
    console.print(table)
    fit = data["flops_to_speed"]
    if fit:
        speed = fit["speed_for_4x_fewer_flops"]
        console.print(f"ShuffleNet family: 4x fewer FLOPs -> {speed:.2f}x "
                      f"{'fewer instructions' if by_count else 'faster'} "
                      f"(slope {fit['slope']:.2f}; the paper: 4x -> 2.6x)")
    for row in data["rows"]:
        if row["error"]:
            console.print(f"[red]missing[/red] {row['model']} at {row['size']}: {row['error']}")


def write_compare(report_dir, data: dict) -> None:
    """report.json, report.md and speedup.png (FLOPs vs latency, log-log) in ``report_dir``."""
    from pathlib import Path

    report_dir = Path(report_dir)
    (report_dir / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(os.devnull, "w") as sink:
        record = Console(record=True, width=200, file=sink)
        compare_table(data, record)
    env = data["environment"]
    (report_dir / "report.md").write_text(
        "# tvmshuffle compare\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in env.items())
        + ("- speedups measured by: instructions counted on the emulated device (one "
           "inference each; the emulator's timings mean nothing)\n"
           if data.get("measured_by") == "instructions" else "")
        + "\n```\n" + record.export_text() + "```\n\n![FLOPs vs latency](speedup.png)\n")
    _plot(data, report_dir / "speedup.png")


def _shufflenet_family(model: str) -> str | None:
    """'ShuffleNet v1 g3' for shufflenet_v1_g3_1.0x, 'ShuffleNet v2' for shufflenet_v2_0.5x;
    None for any other model."""
    match = re.match(r"shufflenet_(v1)_(g\d+)_|shufflenet_(v2)_", model)
    if match is None:
        return None
    return "ShuffleNet " + " ".join(part for part in match.groups() if part)


def _family_and_points(ax, points, marker, colour, line, label, label_points, alpha=1.0):
    """Each ShuffleNet family of ``points`` (flops, ms, model) as a line (v1 with g groups, v2),
    other models as unjoined markers, named beside them when ``label_points``."""
    families: dict[str, list] = {}
    others = []
    for x, y, model in sorted(points):
        family = _shufflenet_family(model)
        if family is None:
            others.append((x, y, model))
        else:
            families.setdefault(family, []).append((x, y))
    for family, family_points in families.items():
        ax.plot(*zip(*family_points), marker=marker, color=colour, linestyle=line, alpha=alpha,
                label=f"{label} ({family})")
    for i, (x, y, model) in enumerate(others):
        ax.plot([x], [y], marker=marker, color=colour, linestyle="none", alpha=alpha,
                label=label if not families and i == 0 else None)
        if label_points:
            ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=colour)


def _plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import compare

    fig, ax = plt.subplots(figsize=(8, 6))
    series: dict = {}
    # an emulated device's instruction counts, in millions, where its timings mean nothing;
    # then the host peers' and the paper's milliseconds are another unit and stay out
    by_count = data.get("measured_by") == "instructions"
    key, scale = ("instructions", 1e-6) if by_count else ("latency_ms", 1.0)
    for row in data["rows"]:
        flops = row["mflops"]
        if row.get(key):
            series.setdefault(("tvmshuffle", row["size"]), []).append(
                (flops, row[key] * scale, row["model"]))
        for engine, ms_value in ({} if by_count else row["peers_ms"] or {}).items():
            series.setdefault((f"{engine} (host)", row["size"]), []).append(
                (flops, ms_value, row["model"]))
    # colour and marker name the engine, the line style the input size; the ShuffleNet family
    # is a line, other models (MobileNet, AlexNet, a user's) are points labelled by name
    styles = {"tvmshuffle": ("o", "C3"), "torch (host)": ("s", "C0"),
              "onnxruntime (host)": ("^", "C2")}
    dashes = {}
    for (engine, size), points in sorted(series.items()):
        marker, colour = styles.get(engine, ("x", "C7"))
        line = dashes.setdefault(size, ("-", "--", "-.", ":")[len(dashes) % 4])
        _family_and_points(ax, points, marker, colour, line, f"{engine} {size}",
                           label_points=engine == "tvmshuffle")
    # the paper's phone, at the FLOPs we count for the same model and size (ours reproduce
    # the paper's at 224x224)
    counted = {(r["model"], r["size"]): r["mflops"] for r in data["rows"]}
    for size in () if by_count else compare.DEFAULT_SIZES:
        points = [(counted[(model, _size(size))], by_size[size], model)
                  for model, (_, by_size) in compare.PAPER_SD820_MS.items()
                  if (model, _size(size)) in counted]
        if points:
            _family_and_points(ax, points, "*", "grey", ":", f"paper SD820 {_size(size)}",
                               label_points=False, alpha=0.6)
    measured = [(r["mflops"], r[key] * scale) for r in data["rows"] if r.get(key)]
    what = "instructions" if by_count else "latency"
    if measured:
        x0, y0 = min(measured)
        xs = [min(m for m, _ in measured), max(m for m, _ in measured) * 2]
        ax.plot(xs, [y0 * x / x0 for x in xs], color="black", linewidth=0.8,
                label=f"ideal: {what} proportional to FLOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MFLOPs (multiply-adds, at the input size)")
    ax.set_ylabel("instructions of one inference, millions" if by_count else "latency, ms")
    env = data["environment"]
    ax.set_title(f"FLOPs vs {what} on {env['device']}" + (" (emulated)" if env["emulated"]
                                                          else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
