"""The framework-free training loop, its schedules, optimizers and checkpoints.

Ray Train wraps :func:`nrcc_scale.engine.loop.train_worker` (see ``nrcc_scale.train``); the same function
runs in-process for debugging or a single GPU (``--no-ray``).
"""
