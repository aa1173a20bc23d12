"""scikit-learn's bundled handwritten digits: 1,797 real 8 x 8 images of 10 classes, shipped with
scikit-learn, so the default run needs no download."""

from __future__ import annotations

import numpy as np

from nrcc_scale.data.base import ArraySource


def load_digits_source() -> ArraySource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 ink intensities -> white digits on black, uint8, replicated to 3 channels so every backbone
    # and augmentation treats them like any RGB image.
    gray = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    mean = float(gray.mean() / 255.0)
    std = float(gray.std() / 255.0)
    return ArraySource("digits", rgb, bunch.target, [str(d) for d in range(10)],
                       mean=(mean,) * 3, std=(std,) * 3)
