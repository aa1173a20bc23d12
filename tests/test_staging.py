"""Staging remote files per node, against a real S3-compatible server on loopback (moto, over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3_fixtures as s3f

from nrcc_scale.data.base import DataError
from nrcc_scale.data.staging import entry_dir, evict_lru, stage
from nrcc_scale.utils import remote_fs

s3_server = s3f.s3_server
REPO = Path(__file__).resolve().parents[1]


def _put(uri: str, data: bytes) -> None:
    fs, path = remote_fs.filesystem(uri)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


STAGE_SCRIPT = """
import json, sys
from nrcc_scale.data.staging import stage
r = stage(sys.argv[1], sys.argv[2], log=lambda m: print(m, flush=True))
print(json.dumps({"action": r.action, "path": str(r.path)}), flush=True)
"""


def _stage_process(uri: str, cache: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, uri, str(cache)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
                            start_new_session=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_workers_on_one_node_download_once(s3_server, tmp_path) -> None:
    data = os.urandom(3_000_000)
    uri = f"s3://{s3_server.new_bucket()}/sets/train.beton"
    _put(uri, data)
    cache = tmp_path / "cache"
    # slow chunks so that the second worker arrives while the first is still copying
    slow = {"NRCC_STAGING_CHUNK_BYTES": str(500_000), "NRCC_STAGING_CHUNK_DELAY": "0.1"}
    procs = [_stage_process(uri, cache, **slow) for _ in range(2)]
    results = [_result(p) for p in procs]
    assert sorted(r["action"] for r in results) == ["cached", "staged"]
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == data
    assert not list(Path(results[0]["path"]).parent.glob("*.partial"))


def test_a_killed_copy_is_never_used_and_the_next_start_resumes_it(s3_server, tmp_path) -> None:
    data = os.urandom(2_000_000)
    uri = f"s3://{s3_server.new_bucket()}/big.beton"
    _put(uri, data)
    cache = tmp_path / "cache"
    proc = _stage_process(uri, cache, NRCC_STAGING_CHUNK_BYTES="200000", NRCC_STAGING_CHUNK_DELAY="0.3")
    partial = entry_dir(cache, uri) / "big.beton.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 400_000):
        assert time.monotonic() < deadline and proc.poll() is None, "the copy never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    arrived = partial.stat().st_size
    assert 0 < arrived < len(data)
    assert not (entry_dir(cache, uri) / "big.beton").exists()  # nothing under the final name

    lines: list[str] = []
    staged = stage(uri, cache, log=lines.append)
    assert staged.action == "resumed" and staged.path.read_bytes() == data
    assert "resumed" in lines[0] and uri in lines[0]
    assert stage(uri, cache).action == "cached"


def test_a_changed_remote_object_is_staged_again(s3_server, tmp_path) -> None:
    uri = f"s3://{s3_server.new_bucket()}/d.beton"
    _put(uri, b"first version")
    assert stage(uri, tmp_path).path.read_bytes() == b"first version"
    assert stage(uri, tmp_path).action == "cached"
    time.sleep(1.1)  # Last-Modified has a resolution of one second
    _put(uri, b"second version!")
    again = stage(uri, tmp_path)
    assert again.action == "staged" and again.path.read_bytes() == b"second version!"


def test_missing_object_names_the_uri_in_one_line(s3_server, tmp_path) -> None:
    bucket = s3_server.new_bucket()
    for uri in (f"s3://{bucket}/nope.beton", f"s3://no-such-bucket-{bucket}/x.beton"):
        with pytest.raises(DataError) as err:
            stage(uri, tmp_path)
        assert uri in str(err.value) and "\n" not in str(err.value)


def test_bad_credentials_name_the_uri_in_one_line(tmp_path, monkeypatch) -> None:
    pytest.importorskip("moto.server")
    with s3f.auth_s3_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        uri = "s3://some-bucket/train.beton"
        with pytest.raises(DataError) as err:
            stage(uri, tmp_path)
    text = str(err.value)
    assert uri in text and "\n" not in text and "credentials" in text


def test_least_recently_used_entries_are_evicted(s3_server, tmp_path) -> None:
    bucket = s3_server.new_bucket()
    uris = [f"s3://{bucket}/f{i}.beton" for i in range(3)]
    for uri in uris:
        _put(uri, os.urandom(100_000))
    for uri in uris[:2]:
        stage(uri, tmp_path)
        time.sleep(0.05)
    stage(uris[0], tmp_path)  # used again: f1 is now the least recently used
    logged: list[str] = []
    stage(uris[2], tmp_path, max_bytes=250_000, log=logged.append)
    assert not entry_dir(tmp_path, uris[1]).exists()
    assert entry_dir(tmp_path, uris[0]).exists() and entry_dir(tmp_path, uris[2]).exists()
    assert any("evicted" in line for line in logged)
    assert evict_lru(tmp_path, 10**9) == []


def test_local_paths_and_file_uris_are_used_in_place(tmp_path) -> None:
    path = tmp_path / "x.beton"
    path.write_bytes(b"abc")
    assert stage(str(path), tmp_path / "cache").path == path
    assert stage(f"file://{path}", tmp_path / "cache").path == path
    with pytest.raises(DataError, match="does not exist"):
        stage(str(tmp_path / "missing.beton"), tmp_path / "cache")


def test_upload_is_complete_or_absent(s3_server, tmp_path) -> None:
    local = tmp_path / "a.bin"
    local.write_bytes(os.urandom(1_000_000))
    uri = f"s3://{s3_server.new_bucket()}/up/a.beton"
    remote_fs.upload_file(local, uri)
    assert remote_fs.read_bytes(uri) == local.read_bytes()
    fs, path = remote_fs.filesystem(uri)
    from pyarrow import fs as pafs

    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path.rsplit("/", 1)[0]))]
    assert names == ["a.beton"]  # the temporary upload object is gone


def test_a_folder_data_set_packed_as_one_archive_is_staged_and_unpacked_once(s3_server, tmp_path) -> None:
    import tarfile

    import numpy as np
    from PIL import Image

    from nrcc_scale.config import DataConfig
    from nrcc_scale.data.registry import build_data

    folder = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="pets")
    uri = f"s3://{s3_server.new_bucket()}/pets.tar"
    remote_fs.upload_file(archive, uri)
    cfg = DataConfig(dataset="image_folder", root=uri, cache_dir=str(tmp_path / "cache"))
    bundle = build_data(cfg)
    assert len(bundle.evaluate) == 20 and bundle.evaluate.class_names == ["cat", "dog"]
    unpacked = entry_dir(tmp_path / "cache", uri) / "unpacked"
    stamp = unpacked.stat().st_mtime_ns
    assert len(build_data(cfg).evaluate) == 20 and unpacked.stat().st_mtime_ns == stamp  # not unpacked again
    with pytest.raises(DataError, match="must be one archive"):
        build_data(DataConfig(dataset="image_folder", root=f"s3://{s3_server.new_bucket()}/folder/"))


def test_prepare_writes_locally_then_uploads_the_complete_beton(s3_server, tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from nrcc_scale.data.__main__ import main as data_main
    from nrcc_scale.data.ffcv_io import ffcv_available

    if not ffcv_available():
        pytest.skip("ffcv is not installed")
    from nrcc_scale.data.ffcv_io import read_beton_fields

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            image.save(tmp_path / "imgs" / cls / f"{i}.png")
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/sets/imgs.beton"
    args = ["prepare", "--dataset", "image_folder", "--root", str(tmp_path / "imgs"), "--split", "all",
            "--workers", "1", "--no-progress", "--out", uri]
    assert data_main(args) == 0
    staged = stage(uri, tmp_path / "cache")
    assert read_beton_fields(staged.path)[0] == 16
    fs, path = remote_fs.filesystem(uri)
    from pyarrow import fs as pafs

    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/sets"))] == ["imgs.beton"]
    # a bucket that does not exist: one line naming the URI, nothing written
    started = __import__("time").perf_counter()
    assert data_main([*args[:-1], f"s3://no-such-{bucket}/x.beton"]) == 2
    assert __import__("time").perf_counter() - started < 5  # refused before writing anything
