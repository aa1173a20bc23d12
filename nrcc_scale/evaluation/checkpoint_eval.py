"""Evaluate a training checkpoint into a run folder: embeddings, clustering, probes, report files.

Writes ``metrics.json`` (main scores at the top level, baselines under ``baselines``), ``embeddings.npy``
with ``labels.npy`` (so ``python -m nrcc_scale.evaluate --embeddings`` can re-cluster without the model),
``umap_scatter.png``, ``confusion.png`` (<= 100 classes) and ``curves.png`` (training monitor).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrcc_scale.config import Config, EvalConfig
from nrcc_scale.config_load import apply_overrides, config_from_dict
from nrcc_scale.data.base import DataBundle, SubsetSource, raw_pixel_features
from nrcc_scale.data.registry import build_data
from nrcc_scale.engine.checkpoint import read_state
from nrcc_scale.evaluation.embed import Embeddings, embed_source
from nrcc_scale.evaluation.html_report import write_html_report
from nrcc_scale.evaluation.linear_probe import linear_probe
from nrcc_scale.evaluation.pipeline import EvaluationResult, evaluate_embeddings
from nrcc_scale.evaluation.report import confusion_plot, curves_plot, format_table, scatter_plot
from nrcc_scale.methods import SSLMethod, build_method
from nrcc_scale.utils.files import atomic_path, atomic_write_json

log = logging.getLogger("nrcc_scale.evaluate")


@dataclass
class TrainedModel:
    method: SSLMethod
    cfg: Config
    resolution: int
    history: list[dict[str, Any]]
    epoch: int


def load_trained(checkpoint: Path, device: torch.device) -> TrainedModel:
    state = read_state(checkpoint)
    cfg = config_from_dict(state.config)
    method = build_method(cfg, state.resolution)
    method.load_state_dict(state.model)
    return TrainedModel(method.to(device).eval(), cfg, state.resolution, list(state.history), state.epoch)


def _rows_within(evaluate, probe) -> np.ndarray | None:
    """Rows of ``evaluate`` that ``probe`` consists of, when it is a subset of it (no second embedding)."""
    if isinstance(probe, SubsetSource) and probe.base is evaluate:
        return probe.indices
    return None


def probe_embeddings(model: torch.nn.Module, data: DataBundle, evaluated: Embeddings, resolution: int,
                     device: torch.device, batch_size: int) -> tuple[Embeddings, Embeddings]:
    def get(probe) -> Embeddings:
        rows = _rows_within(data.evaluate, probe)
        if rows is not None and np.array_equal(evaluated.indices, np.arange(len(data.evaluate))):
            return Embeddings(evaluated.features[rows], evaluated.labels[rows], rows)
        return embed_source(model, probe, resolution, device, batch_size, progress=True, desc="embed probe")

    return get(data.probe_train), get(data.probe_test)


def save_embeddings(folder: Path, emb: Embeddings) -> None:
    for name, array in (("embeddings.npy", emb.features), ("labels.npy", emb.labels),
                        ("indices.npy", emb.indices)):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)


def write_report(out_dir: Path, result: EvaluationResult, labels: np.ndarray, metrics: dict[str, Any],
                 history: list[dict[str, Any]], title: str, plots: bool) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", metrics)
    files = {"metrics": str(out_dir / "metrics.json")}
    if plots and result.main.reduced is not None:
        labelled = result.extra.get("labelled", True)
        # without labels both panels show the found clusters (there is no class to colour by)
        shown = labels if labelled else result.main.predicted
        files["scatter"] = str(scatter_plot(result.main.reduced, shown, result.main.predicted,
                                            out_dir / "umap_scatter.png",
                                            title if labelled else f"{title} (no labels)"))
        conf = confusion_plot(labels, result.main.predicted, out_dir / "confusion.png") if labelled else None
        if conf:
            files["confusion"] = str(conf)
        curves = curves_plot(history, out_dir / "curves.png", result.extra.get("embedding_dim"))
        if curves:
            files["curves"] = str(curves)
    return files


def evaluate_checkpoint(checkpoint: Path, out_dir: Path, device: torch.device | None = None,
                        overrides: list[str] | None = None, embeddings: Embeddings | None = None
                        ) -> tuple[dict[str, Any], str]:
    """Everything the paper reports after training, for one checkpoint. Returns (metrics, table).

    ``overrides`` (``eval.*=value``) change how the evaluation runs; ``embeddings`` skips the embedding
    stage (e.g. when Ray tasks already embedded the set, :mod:`nrcc_scale.evaluation.parallel_embed`).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    trained = load_trained(checkpoint, device)
    cfg = apply_overrides(trained.cfg, list(overrides or []))
    ecfg = cfg.eval
    data = build_data(cfg.data, seed=cfg.train.seed)
    model = trained.method.embedding_model()
    emb = embeddings or embed_source(model, data.evaluate, trained.resolution, device, ecfg.batch_size,
                                     progress=True, desc="embed")
    save_embeddings(out_dir, emb)
    raw = raw_pixel_features(data.evaluate) if ecfg.baselines else None
    result = evaluate_embeddings(emb.features, emb.labels, data.evaluate.num_classes, ecfg, raw_features=raw)
    metrics = result.to_metrics()
    probes: dict[str, float] = {}
    if result.extra["labelled"]:  # kNN accuracy and the linear probe need labels
        train_emb, test_emb = probe_embeddings(model, data, emb, trained.resolution, device, ecfg.batch_size)
        probes = probe_scores(train_emb, test_emb, data.evaluate.num_classes, ecfg, device)
    metrics.update(probes)
    metrics.update(method=cfg.method.name, nrcc=cfg.uses_nrcc, dataset=cfg.data.dataset,
                   backbone=cfg.model.backbone, epochs=trained.epoch, checkpoint=str(checkpoint),
                   evaluation_seconds=round(time.perf_counter() - started, 2))
    title = (f"{cfg.method.name}{'+NRCC' if cfg.uses_nrcc else ''} on {cfg.data.dataset}: "
             f"UMAP {ecfg.n_components}-d + GridShift")
    metrics["files"] = write_report(out_dir, result, emb.labels, metrics, trained.history, title, ecfg.plots)
    metrics["files"].update(write_cluster_outputs(out_dir, result, emb, data.evaluate, ecfg.plots))
    table = format_table(result, probe_rows(probes, ecfg))
    metrics["files"]["report"] = str(out_dir / "report.html")
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_html_report(out_dir, metrics, table, title)
    return metrics, table


def write_cluster_outputs(out_dir: Path, result: EvaluationResult, emb: Embeddings, source: Any,
                          plots: bool) -> dict[str, str]:
    """clusters.parquet (+ what ``assign`` needs) and the galleries, for every run, labelled or not."""
    from nrcc_scale.evaluation.clusters_output import write_run_clusters
    from nrcc_scale.evaluation.gallery import write_galleries

    main = result.main
    if main.reduced is None or main.modes is None:
        return {}
    files = write_run_clusters(out_dir, source, emb.indices, emb.features, main.reduced, main.predicted, main.modes,
                               nearest=main.nearest_distance)
    if plots:
        files.update(write_galleries(out_dir, source, emb.indices, main.predicted, main.reduced, main.modes,
                                     emb.labels, getattr(source, "class_names", None)))
    return files


def probe_scores(train: Embeddings, test: Embeddings, num_classes: int, ecfg: EvalConfig,
                 device: torch.device) -> dict[str, float]:
    """kNN accuracy (the training monitor's protocol) and, if configured, the linear probe's top-1."""
    from nrcc_scale.cluster.knn import weighted_knn_accuracy

    out = {"knn_acc": weighted_knn_accuracy(train.features, train.labels, test.features, test.labels,
                                            k=ecfg.knn_k, temperature=ecfg.knn_temperature,
                                            num_classes=num_classes)}
    if ecfg.linear_eval:
        out["linear_acc"] = linear_probe(train.features, train.labels, test.features, test.labels,
                                         num_classes=num_classes, device=device).test_accuracy
    return out


def probe_rows(probes: dict[str, float], ecfg: EvalConfig) -> dict[str, float]:
    if "knn_acc" not in probes:
        return {}
    rows = {f"kNN accuracy (k = {ecfg.knn_k})": probes["knn_acc"]}
    if "linear_acc" in probes:
        rows["linear probe top-1"] = probes["linear_acc"]
    return rows


def evaluate_arrays(features: np.ndarray, labels: np.ndarray, out_dir: Path, ecfg: EvalConfig,
                    title: str = "embeddings: UMAP + GridShift") -> tuple[dict[str, Any], str]:
    """The clustering evaluation of any embedding matrix (no model, no images: no raw-pixel baseline)."""
    started = time.perf_counter()
    num_classes = len(np.unique(labels[labels >= 0]))
    result = evaluate_embeddings(features, labels, num_classes, ecfg)
    metrics = result.to_metrics()
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 2)
    metrics["files"] = write_report(out_dir, result, labels, metrics, [], title, ecfg.plots)
    emb = Embeddings(features, labels, np.arange(len(features)))
    metrics["files"].update(write_cluster_outputs(out_dir, result, emb, None, ecfg.plots))
    table = format_table(result)
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_html_report(out_dir, metrics, table, title)
    return metrics, table
