"""The evaluation end to end vs what a user would run instead: ``python -m nrcc_scale.evaluate`` vs
umap-learn alone, on the same generated embeddings, one process tree (issues 11 and 17).

    python benchmarks/eval_end_to_end.py --quick                       # 5,000 x 256, 20 classes (< 1 min)
    python benchmarks/eval_end_to_end.py --n 128117 1281167 --json docs/benchmarks/eval_end_to_end.json
    python benchmarks/eval_end_to_end.py --n 128117 --before /work/main  # also the old code, same data

Data: ``benchmarks/make_embeddings.py`` (1000 classes, 256-d unit vectors, float32; written once under
``--data-dir``, default /tmp/evaldata, never committed). For each N, run one after the other as child
processes of this script:

* **ours**: ``python -m nrcc_scale.evaluate --embeddings X.npy --labels y.npy`` (defaults: kNN graph by the
  measured rule, UMAP on all cores, GridShift, scores, the k-means and HDBSCAN baselines on a subsample,
  plots). Stage times, graph recall and NMI come from its metrics.json.
* **umap-learn alone**: ``umap.UMAP(n_neighbors=10, n_components=3, min_dist=0.0, metric="cosine")
  .fit_transform(X)`` - its own pynndescent graph, all cores (``n_jobs=-1``), no seed; nothing else. Its
  output is then clustered by GridShift in this process (not timed) to give its NMI.
* ``trust``: the UMAP layout's trustworthiness (k = 10, cosine, 2000 seeded rows; ``evaluation.label_free``),
  from ours' metrics.json and computed the same way on umap-learn's layout: how well each keeps the
  embedding's neighbours, i.e. whether our kNN graph costs UMAP anything against umap-learn's own.
* **before** (``--before CHECKOUT``): the same command as ours run from another checkout (the code before
  issue 17), for a before/after measured on the same data and machine.

Times are wall-clock seconds of each child process (imports and loading included for all); peak memory is
the largest resident set of the child process tree (sampled every 0.2 s). ``ratio`` = ours / umap-learn
alone (goal <= 1.0). With two sizes, ``growth`` = time(N2) / time(N1) per stage (goal <= 12 for 10x N).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import psutil
from make_embeddings import generate

UMAP_ALONE = """
import sys, time, numpy as np, umap
x = np.load(sys.argv[1])
t0 = time.perf_counter()
emb = umap.UMAP(n_neighbors=10, n_components=3, min_dist=0.0, metric="cosine").fit_transform(x)
print(f"fit_transform {time.perf_counter() - t0:.2f} s", flush=True)
np.save(sys.argv[2], emb.astype(np.float32))
"""


def run_child(cmd: list[str], cwd: Path, log_path: Path) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, peak RSS of its process tree (GiB) and the return code."""
    env = dict(os.environ, PYTHONPATH=str(cwd))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        parent = psutil.Process(proc.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    procs = [parent, *parent.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in procs))
                except psutil.Error:
                    pass
                time.sleep(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        done.set()
        thread.join()
    seconds = time.perf_counter() - start
    if rc != 0:
        print(f"  command failed (rc {rc}); see {log_path}:\n" + log_path.read_text()[-3000:], flush=True)
    return {"seconds": seconds, "peak_gib": peak / 2**30, "rc": rc}


def score_layout(embedding_path: Path, x_path: Path, labels: np.ndarray) -> dict[str, float | None]:
    """NMI of GridShift on a saved UMAP layout, and the layout's trustworthiness - the same sampled score
    (rows, seed, k) that ``evaluate`` writes to its metrics.json."""
    from nrcc_scale.cluster import GridShift, clustering_scores
    from nrcc_scale.evaluation.label_free import trustworthiness

    layout = np.load(embedding_path)
    pred = GridShift().fit_predict(layout)
    return {"nmi_after_gridshift": float(clustering_scores(labels, pred)["nmi"]),
            "trustworthiness": trustworthiness(np.load(x_path, mmap_mode="r"), layout)}


def evaluate_run(python: str, checkout: Path, x: Path, y: Path, out: Path, tag: str,
                 extra: list[str]) -> dict[str, Any]:
    cmd = [python, "-m", "nrcc_scale.evaluate", "--embeddings", str(x), "--labels", str(y), "--out", str(out),
           *extra]
    res = run_child(cmd, checkout, out.parent / f"{tag}.log")
    if res["rc"] == 0:
        metrics = json.loads((out / "metrics.json").read_text())
        res["stages"] = metrics.get("seconds", {})
        res["nmi"] = metrics.get("nmi")
        res["trustworthiness"] = metrics.get("trustworthiness")
        res["clusters"] = metrics.get("num_clusters")
        res["recall"] = (metrics.get("knn") or {}).get("recall")
        res["knn_builder"] = (metrics.get("knn") or {}).get("builder", metrics.get("backends", {}).get("knn"))
        res["baselines"] = {k: {"nmi": v.get("nmi"), "noise_fraction": v.get("noise_fraction"),
                                "sample_size": v.get("sample_size")} for k, v in metrics.get("baselines", {}).items()}
    return res


def main() -> None:
    def add_arguments(p) -> None:
        p.add_argument("--n", type=int, nargs="+", default=[128_117, 1_281_167])
        p.add_argument("--classes", type=int, default=1000)
        p.add_argument("--dim", type=int, default=256)
        p.add_argument("--data-dir", type=Path, default=Path("/tmp/evaldata"))
        p.add_argument("--before", type=Path, default=None, help="a checkout with the old code to run too")
        p.add_argument("--before-max-n", type=int, default=200_000, help="run --before only up to this N")
        p.add_argument("--no-umap-alone", action="store_true")
        p.add_argument("--variant", nargs="*", default=[], metavar="eval.key=value",
                       help="also run ours with these overrides (e.g. eval.umap_epochs=100), up to --variant-max-n "
                       "rows")
        p.add_argument("--variant-max-n", type=int, default=200_000)

    args = _common.parse_args(__doc__.splitlines()[0], add_arguments)
    if args.quick:
        args.n, args.classes = [5000], 20
    python = sys.executable
    repo = _common.REPO_ROOT
    work = Path(tempfile.mkdtemp(prefix="e2e_"))
    load_at_start = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    for n in args.n:
        stem = args.data_dir / f"n{n}_c{args.classes}_d{args.dim}"
        x, y = Path(f"{stem}_X.npy"), Path(f"{stem}_y.npy")
        if not (x.is_file() and y.is_file()):
            generate(n, args.classes, args.dim, 1.0, 0, str(stem))
        labels = np.load(y)
        print(f"N = {n:,} ({args.classes} classes, {args.dim}-d): {x}", flush=True)
        entry: dict[str, Any] = {"N": n}
        entry["ours"] = evaluate_run(python, repo, x, y, work / f"ours_{n}", f"ours_{n}", [])
        print(f"  ours: {entry['ours']['seconds']:.1f} s, peak {entry['ours']['peak_gib']:.2f} GiB, "
              f"stages {entry['ours'].get('stages')}", flush=True)
        if args.variant and n <= args.variant_max_n:
            entry["variant"] = evaluate_run(python, repo, x, y, work / f"variant_{n}", f"variant_{n}", args.variant)
            entry["variant"]["overrides"] = args.variant
            print(f"  ours {' '.join(args.variant)}: {entry['variant']['seconds']:.1f} s, NMI "
                  f"{entry['variant'].get('nmi')}", flush=True)
        if not args.no_umap_alone:
            emb = work / f"umap_alone_{n}.npy"
            entry["umap_alone"] = run_child([python, "-c", UMAP_ALONE, str(x), str(emb)], repo,
                                            work / f"umap_alone_{n}.log")
            if entry["umap_alone"]["rc"] == 0:
                entry["umap_alone"].update(score_layout(emb, x, labels))
            print(f"  umap-learn alone: {entry['umap_alone']['seconds']:.1f} s, peak "
                  f"{entry['umap_alone']['peak_gib']:.2f} GiB", flush=True)
        if args.before is not None and n <= args.before_max_n:
            before_python = str(args.before / ".venv/bin/python") if (args.before / ".venv/bin/python").exists() \
                else python
            entry["before"] = evaluate_run(before_python, args.before, x, y, work / f"before_{n}", f"before_{n}",
                                           [])
            print(f"  before ({args.before}): {entry['before']['seconds']:.1f} s, stages "
                  f"{entry['before'].get('stages')}", flush=True)
        results.append(entry)

    rows: list[dict[str, Any]] = []
    for e in results:
        ours, alone = e["ours"], e.get("umap_alone")
        st = ours.get("stages", {})
        row = {"N": e["N"], "ours s": ours["seconds"], "umap-learn alone s": alone["seconds"] if alone else None,
               "ratio": ours["seconds"] / alone["seconds"] if alone else None,
               "kNN s": st.get("knn"), "UMAP s": st.get("reduce"), "GridShift s": st.get("cluster"),
               "metrics s": st.get("metrics"), "baselines s": st.get("baselines"),
               "recall": ours.get("recall"), "NMI ours": ours.get("nmi"), "clusters ours": ours.get("clusters"),
               "NMI umap-alone+GridShift": alone.get("nmi_after_gridshift") if alone else None,
               "trust ours": ours.get("trustworthiness"),
               "trust umap-alone": alone.get("trustworthiness") if alone else None,
               "peak GiB ours": ours["peak_gib"], "peak GiB umap-alone": alone["peak_gib"] if alone else None}
        total_stages = sum(v for v in st.values()) or float("nan")
        for key in ("knn", "reduce", "cluster", "metrics", "baselines"):
            if key in st:
                row[f"share {key}"] = st[key] / total_stages
        if "before" in e:
            row["before s"] = e["before"]["seconds"]
            row["before stages"] = e["before"].get("stages")
        if "variant" in e:
            row["variant"] = " ".join(e["variant"]["overrides"])
            row["variant s"] = e["variant"]["seconds"]
            row["variant NMI"] = e["variant"].get("nmi")
            row["variant clusters"] = e["variant"].get("clusters")
        rows.append(row)
    columns = ["N", "ours s", "umap-learn alone s", "ratio", "kNN s", "UMAP s", "GridShift s", "metrics s",
               "baselines s", "recall", "NMI ours", "clusters ours", "NMI umap-alone+GridShift", "trust ours",
               "trust umap-alone", "peak GiB ours",
               "peak GiB umap-alone"]
    if any("variant" in r for r in rows):
        columns += ["variant", "variant s", "variant NMI", "variant clusters"]
    _common.print_table(rows, columns, title="evaluate (ours) vs umap-learn alone, wall seconds per child process",
                        floatfmt="{:.4g}")
    growth: dict[str, float] = {}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        for col in ("ours s", "umap-learn alone s", "kNN s", "UMAP s", "GridShift s", "metrics s", "baselines s"):
            if a.get(col) and b.get(col):
                growth[col] = b[col] / a[col]
        print(f"growth time(N={b['N']}) / time(N={a['N']}): " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    notes = [f"{psutil.cpu_count()} CPU cores; load average {load_at_start:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end (above the core count: other work shared the machine, so absolute "
             "times are pessimistic); ours and umap-learn alone ran one after the other on the same data",
             "ours = python -m nrcc_scale.evaluate (kNN + UMAP + GridShift + scores + k-means/HDBSCAN baselines on a "
             "subsample + plots); umap-learn alone = UMAP(n_neighbors=10, n_components=3, min_dist=0.0, "
             "metric='cosine').fit_transform only"]
    if growth:
        notes.append("growth " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    if args.json:
        report_rows = [{c: r.get(c) for c in columns} for r in rows]
        _common.write_json(args.json, {"benchmark": "eval_end_to_end", "settings": {
            "n": args.n, "classes": args.classes, "dim": args.dim}, "results": results, "rows": rows,
            "growth": growth, "report": {"title": "Evaluation end to end: ours vs umap-learn alone",
                                         "columns": columns, "rows": report_rows, "notes": notes, "plots": []}})


if __name__ == "__main__":
    main()
