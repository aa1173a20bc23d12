"""The GPU kNN library check (nrcc_scale/cluster/gpu_knn.py): a self-test in a subprocess, so that a faiss
wheel without kernels for the device (which aborts its process) cannot take the caller down."""

from __future__ import annotations

import pytest
import torch

from nrcc_scale.cluster import gpu_knn


def test_a_probe_that_aborts_is_reported_not_fatal() -> None:
    reason = gpu_knn._probe("import sys; print('CUDA error 209 no kernel image is available', file=sys.stderr);"
                            " import os; os.abort()")
    assert reason is not None and "no kernel image" in reason and "exit" in reason
    assert gpu_knn._probe("x = 1") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_cuda_no_gpu_library_is_chosen_and_the_line_says_why(caplog) -> None:
    gpu_knn.gpu_knn_backend.cache_clear()
    with caplog.at_level("INFO", logger="nrcc_scale.cluster"):
        backend, why = gpu_knn.gpu_knn_backend()
    assert backend == "none" and "kNN runs on the CPU" in why
    assert any("stage knn: GPU library none" in r.getMessage() for r in caplog.records)
