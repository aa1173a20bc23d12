"""Data sets, augmentation and loaders. ``python -m nrcc_scale.data`` prepares FFCV files.

``nrcc_scale.data.registry.build_data`` turns a run's data configuration into its splits; the data set names
and their readers are the table in :mod:`nrcc_scale.data.catalog`. This package module imports neither, so
that ``nrcc_scale.config`` can read the names from the catalog without importing the registry (which imports
the config) first.
"""

from nrcc_scale.data.base import DataBundle, DataError, ImageSource

__all__ = ["DataBundle", "DataError", "ImageSource"]
