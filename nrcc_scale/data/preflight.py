"""The driver's check of the data source before any worker starts (one line and exit status 2 on failure).

Without it a missing ``.beton`` or a corrupt image under ``on_bad_file: fail`` is found by every worker at
once, and a Ray run prints one traceback per worker plus the driver's. The driver checks what it can:

* ``data.beton``: a remote object exists and the credentials may read it (one HEAD request); a local file
  exists and is an FFCV file with the fields the loader needs (when ffcv imports);
* ``data.format: parquet`` / ``ray_data``: the shards' manifest is there and names readable shards;
* the data set itself: :func:`nrcc_scale.data.registry.build_data`, which builds the folder index (and
  applies ``on_bad_file`` to the files it checks) exactly as the workers will.
"""

from __future__ import annotations

from nrcc_scale.config import SHARD_FORMATS, Config
from nrcc_scale.data.base import DataError
from nrcc_scale.utils import remote_fs


def check_beton(beton: str) -> None:
    if remote_fs.is_remote(beton):
        remote_fs.stat_file(beton)
        return
    from nrcc_scale.data.ffcv_io import ffcv_available

    path = remote_fs.local_path_of(beton)
    import os

    if not os.path.isfile(path):
        raise DataError(f"{beton} not found; write it with `python -m nrcc_scale.data prepare --dataset NAME "
                        f"--root DIR --out {beton}`")
    if not os.access(path, os.R_OK):
        raise DataError(f"{beton} is not readable (permissions)")
    if ffcv_available():
        from nrcc_scale.data.ffcv_io import FIELDS, read_beton_fields

        _, names = read_beton_fields(path)
        missing = [f for f in FIELDS if f not in names]
        if missing:
            raise DataError(f"{beton} lacks the field(s) {', '.join(missing)}; write it with "
                            "`python -m nrcc_scale.data prepare`")


def check_data_source(cfg: Config) -> None:
    """Raise a one-line DataError if the run's data cannot be read (see the module docstring)."""
    d = cfg.data
    if d.beton and d.loader != "torchvision" and d.format not in SHARD_FORMATS:
        check_beton(d.beton)
    if d.format in SHARD_FORMATS:
        from nrcc_scale.data.parquet_shards import read_manifest

        read_manifest(d.root)
    from nrcc_scale.data.registry import build_data

    build_data(d, seed=cfg.train.seed)


def find_data_error(err: BaseException | None) -> DataError | None:
    """The DataError behind a (possibly wrapped) error from Ray Train workers, if there is one."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataError):
            return e
        stack += [e.__cause__, e.__context__]
        for attr in ("worker_failures", "errors"):
            value = getattr(e, attr, None)
            if isinstance(value, dict):
                stack += [v for v in value.values() if isinstance(v, BaseException)]
            elif isinstance(value, list | tuple):
                stack += [v for v in value if isinstance(v, BaseException)]
        for attr in ("error", "cause"):
            value = getattr(e, attr, None)
            if isinstance(value, BaseException):
                stack.append(value)
    return None
