"""What the channel shuffle costs: ShuffleNet with the fusion pass, without it, and with the
shuffle deleted (the lower bound), untuned and after the same tuning budget, in one run.

    python benchmarks/shuffle_fusion.py [--model shufflenet_v1_g3_1.0x] [--trials-per-task 32]
        [--db DIR] [--threads 1] [--repeat 50]

The three variants share most tuning tasks (the group convolutions are identical), so one
database serves all three; the tuning of each variant resumes from what the others recorded.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tvmshuffle import bench, export, frontends, models, remote, target, tune


def variants(name: str, work: Path) -> dict[str, tuple[frontends.ImportedModel, bool]]:
    """label -> (imported model, fuse_shuffle)."""
    groups, scale = re.fullmatch(r"shufflenet_v1_g(\d)_([\d.]+)x", name).groups()
    no_shuffle = models.ShuffleNetV1(int(groups), float(scale), shuffle=False)
    # the zoo's seeded weights: same parameters, only the shuffles removed
    no_shuffle.load_state_dict(models.build(name).state_dict())
    path = work / "no_shuffle.pt2"
    torch.export.save(torch.export.export(no_shuffle.eval(), (torch.zeros(1, 3, 224, 224),)),
                      str(path))
    fused = frontends.load(frontends.ModelSpec(name))
    return {"shuffle fused (tvmshuffle)": (fused, True),
            "shuffle as TVM leaves it": (fused, False),
            "shuffle deleted (lower bound)": (frontends.load(frontends.ModelSpec(str(path))),
                                              True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_1.0x")
    parser.add_argument("--trials-per-task", type=int, default=32)
    parser.add_argument("--db", type=Path, help="tuning database (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tgt = target.resolve("host", threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = args.db or work / "db"
        cases = variants(args.model, work)
        tuning_s = {}
        if args.trials_per_task > 0:
            with remote.embedded_device(args.threads) as tracker:
                for label, (model, fuse) in cases.items():
                    config = tune.TuneConfig(tgt, db, trials=10**6,
                                             trials_per_task=args.trials_per_task, ops=("all",),
                                             fuse_shuffle=fuse)
                    start = time.perf_counter()
                    tune.tune(model.mod, config, tracker, 1)
                    tuning_s[label] = round(time.perf_counter() - start, 1)
        for label, (model, fuse) in cases.items():
            row = {"variant": label, "tuning_s": tuning_s.get(label)}
            for state, database in (("untuned", None), ("tuned", db)):
                if state == "tuned" and not args.trials_per_task:
                    continue
                out = work / f"{len(rows)}-{state}"
                manifest = export.build_artifact(
                    model, export.CompileConfig(tgt, fuse, db=database), out)
                result = bench.run_local(bench.load_artifact(out), args.threads, args.repeat)
                row[state] = {"median_ms": result.latency.median_ms,
                              "max_abs_err": result.max_abs_err,
                              "data_movement_kernels": len(manifest["data_movement_kernels"]),
                              "tuned_kernels": len(manifest["tuning"]["tuned_kernels"])}
            rows.append(row)

    bound = rows[-1]
    table = Table(title=f"{args.model}, host, {args.threads} thread(s), 224x224, median ms "
                        f"(ratio to the shuffle-free lower bound); "
                        f"{args.trials_per_task} trials per task")
    for column in ("variant", "shuffle kernels", "untuned", "tuned", "tuning s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        cells = []
        for state in ("untuned", "tuned"):
            if state in row:
                ms_value = row[state]["median_ms"]
                cells.append(f"{ms_value:.2f} ({ms_value / bound[state]['median_ms']:.3f}x)")
            else:
                cells.append("-")
        table.add_row(row["variant"], str(row["untuned"]["data_movement_kernels"]), *cells,
                      str(row["tuning_s"] or "-"))
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads,
                                         "trials_per_task": args.trials_per_task,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
