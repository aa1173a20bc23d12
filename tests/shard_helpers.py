"""Helpers shared by the Parquet-shard tests (``data.format: parquet`` and ``ray_data``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: Starts like a JPEG, then is not one: decoding it must fail.
NOT_A_JPEG = b"\xff\xd8\xff\xe0 this is not a jpeg"


def corrupt_shard_row(path: Path, row: int) -> None:
    """Replace the image bytes of ``row`` in the shard file ``path`` with bytes that do not decode."""
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[row] = NOT_A_JPEG
    column = table.schema.get_field_index("image")
    pq.write_table(table.set_column(column, "image", pa.array(images, pa.binary())), path)
