"""Data sets, augmentation and loaders. ``python -m nrcc_scale.data`` prepares FFCV files."""

from nrcc_scale.data.base import DataBundle, DataError, ImageSource
from nrcc_scale.data.registry import build_data

__all__ = ["DataBundle", "DataError", "ImageSource", "build_data"]
