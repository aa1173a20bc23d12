"""Evaluation that stays on the GPU when there is one (issue 10, item 5), checked where it can be on a CPU:
the GridShift backend choice, the GPU share of each Ray embedding task, and the task's device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrcc_scale.cluster import GridShift
from nrcc_scale.evaluation.parallel_embed import MAX_TASKS_PER_GPU, gpu_share, task_device
from nrcc_scale.evaluation.pipeline import gridshift_input


@pytest.mark.parametrize(("shards", "gpus", "share"), [(16, 0, 0.0), (16, 8, 0.5), (8, 8, 1.0), (3, 8, 1.0),
                                                       (64, 8, 1.0 / MAX_TASKS_PER_GPU), (5, 2, 1.0 / 3)])
def test_each_embedding_task_asks_for_a_gpu_share(shards: int, gpus: int, share: float) -> None:
    assert gpu_share(shards, gpus) == pytest.approx(share)


def test_an_embedding_task_without_a_gpu_runs_on_the_cpu() -> None:
    assert task_device(False) == torch.device("cpu")
    assert task_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_gridshift_backend_setting() -> None:
    x = np.random.default_rng(0).standard_normal((2000, 3)).astype(np.float32)
    backend, data = gridshift_input(x, "numpy")
    assert backend == "numpy" and data is x
    backend, data = gridshift_input(x, "torch")
    assert backend == "torch" and isinstance(data, torch.Tensor)
    assert data.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    backend, data = gridshift_input(x, "auto")
    assert (backend, isinstance(data, torch.Tensor)) == (("torch", True) if torch.cuda.is_available()
                                                         else ("numpy", False))
    labels = {}
    for setting in ("numpy", "torch", "auto"):
        backend, data = gridshift_input(x, setting)
        labels[setting] = GridShift(bandwidth=0.7, backend=backend).fit_predict(data)
    assert np.array_equal(labels["numpy"], labels["torch"]) and np.array_equal(labels["numpy"], labels["auto"])
