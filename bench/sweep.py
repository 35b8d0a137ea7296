"""Benchmark results on disk: where a run writes, CSV in and out, and multirun sweeps collected
into one CSV and one plot.

``nybble-bench -m task=request_throughput engine.max_batch_size=16,32,64`` runs one Hydra job
per value. Each job writes its own CSV into its job folder (``<sweep dir>/<job number>/``), its
overrides in the ``overrides`` column; after every job, ``collect`` merges all the jobs' rows so
far into ``<sweep dir>/<task>-sweep.csv`` and draws ``<task>-sweep.png``, so the last job leaves
the whole sweep. ``python -m bench.sweep <sweep dir | csv>`` does the same by hand, or redraws the
PNG of one CSV (say, a CSV measured on a GPU machine without matplotlib).
"""

from __future__ import annotations

import csv
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

SWEEP_SUFFIX = "-sweep"


def hydra_multirun() -> tuple[Path, Path, list[str]] | None:
    """(sweep dir, this job's dir, this job's overrides) inside a Hydra multirun, else None
    (a single run, or run(cfg) called without Hydra, as on a GPU machine without hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir), Path(hc.runtime.output_dir), list(hc.overrides.task)


def results_dir(cfg) -> Path:
    """Where this run writes: its job folder inside a multirun, else ``cfg.output_dir``."""
    job = hydra_multirun()
    path = job[1] if job else Path(cfg.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_overrides() -> str:
    """This Hydra job's command-line overrides as one string ('' outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return ""
    return " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> None:
    """Rows as CSV in ``columns`` order; floats with 6 significant digits."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path: Path) -> list[dict]:
    """Rows of a results CSV, numbers as int or float, everything else as str."""
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def finish(task: str, rows: list[dict], columns: Sequence[str], path: Path, plot: Callable) -> None:
    """Write a run's CSV and PNG (``path`` is the CSV); inside a multirun, also re-collect the
    sweep. Without matplotlib (the GPU machine) the CSV is written and the command to draw the
    PNG later is printed."""
    write_csv(rows, columns, path)
    print(f"wrote {path}")
    draw(plot, rows, path.with_suffix(".png"))
    job = hydra_multirun()
    if job:
        collect(job[0], task)


def draw(plot: Callable, rows: list[dict], png: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {png.name}; draw it where it is installed with "
              f"`python -m bench.sweep {png.with_suffix('.csv')}`")  # fmt: skip
        return
    matplotlib.use("Agg")
    plot(rows, png)
    print(f"wrote {png}")


def log_axis(ax, values: Sequence) -> None:
    """A log2 x axis labelled with exactly ``values`` (concurrency 1, 8, 16, 32 ...)."""
    ticks = sorted({v for v in values if isinstance(v, (int, float)) and v > 0})
    if len(ticks) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()


def collect(sweep_dir: Path, task: str) -> Path | None:
    """Merge the rows of every job's ``<task>-*.csv`` under ``sweep_dir`` into
    ``<sweep_dir>/<task>-sweep.csv`` (jobs in numeric order) and draw its PNG."""
    files = sorted(
        (p for p in sweep_dir.glob(f"*/{task}-*.csv") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if not files:
        return None
    rows, columns = [], ["job"]
    for p in files:
        for r in read_csv(p):
            rows.append({"job": int(p.parent.name), **r})
            columns += [k for k in r if k not in columns]
    out = sweep_dir / f"{task}{SWEEP_SUFFIX}.csv"
    write_csv(rows, columns, out)
    print(f"sweep: {len(files)} runs, {len(rows)} rows -> {out}")
    draw(lambda rs, png: plot_sweep(task, rs, png), rows, out.with_suffix(".png"))
    return out


def swept(rows: list[dict]) -> dict[str, list[str]]:
    """Override keys whose value differs between the rows -> each row's value."""
    per_row = [dict(o.split("=", 1) for o in str(r.get("overrides") or "").split()) for r in rows]
    keys = sorted({k for d in per_row for k in d})
    found = {k: [d.get(k, "") for d in per_row] for k in keys}
    return {k: v for k, v in found.items() if len(set(v)) > 1}


def plot_sweep(task: str, rows: list[dict], png: Path) -> None:
    """One panel per metric the task names (its SWEEP_METRICS). With one numeric swept setting
    it is the x axis and each concurrency a line; otherwise concurrency is the x axis and each
    combination of swept settings a line."""
    import matplotlib.pyplot as plt

    metrics = importlib.import_module(f"bench.{task}").SWEEP_METRICS
    keys = swept(rows)
    numeric = {
        k: v for k, v in keys.items() if all(isinstance(_number(x), (int, float)) for x in v)
    }
    if len(keys) == 1 and numeric:
        (xkey, xs), = numeric.items()  # fmt: skip
        x = [_number(v) for v in xs]
        label = [f"concurrency {r['concurrency']}" for r in rows]
    else:
        xkey, x = "concurrency", [r["concurrency"] for r in rows]
        label = [
            " ".join(f"{k}={v[i]}" for k, v in keys.items()) or "all" for i in range(len(rows))
        ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, (col, title) in zip(axes[0], metrics):
        for name in dict.fromkeys(label):
            pts = sorted((xi, r[col]) for xi, r, lb in zip(x, rows, label) if lb == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set(xlabel=xkey, ylabel=title, title=title)
        log_axis(ax, x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = rows[0]
    fig.suptitle(f"{task} sweep: {first.get('model', '')} on {first.get('device', '')} "
                 f"({first.get('versions', '')})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def replot(csv_path: Path) -> None:
    """Draw the PNG of a results CSV named ``<task>-<device>.csv`` or ``<task>-sweep.csv``."""
    stem = csv_path.stem
    rows = read_csv(csv_path)
    if stem.endswith(SWEEP_SUFFIX):
        task = stem.removesuffix(SWEEP_SUFFIX)
        draw(lambda rs, png: plot_sweep(task, rs, png), rows, csv_path.with_suffix(".png"))
        return
    task = next((t for t in ("request_throughput", "api_serving") if stem.startswith(t)), None)
    if task is None:
        raise SystemExit(f"{csv_path.name}: expected request_throughput-*.csv or api_serving-*.csv")
    draw(importlib.import_module(f"bench.{task}").plot, rows, csv_path.with_suffix(".png"))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.sweep <multirun dir | results CSV> ...``"""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m bench.sweep <multirun sweep dir | results CSV> ...")
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            tasks = {p.name.split("-")[0] for p in path.glob("*/*.csv")}
            if not tasks:
                raise SystemExit(f"{path}: no job folders with results CSVs")
            for task in sorted(tasks):
                collect(path, task)
        elif path.suffix == ".csv" and path.is_file():
            replot(path)
        else:
            raise SystemExit(f"{path}: neither a sweep folder nor a CSV file")


if __name__ == "__main__":
    main()
