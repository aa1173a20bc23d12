"""The FFCV training loader: the same batches as the torchvision loader, from a ``.beton`` file.

Yields ``(views, labels, indices)``: ``views`` a ``B x V x 3 x R x R`` uint8 tensor (on the training device
when it is a GPU), ``labels`` and ``indices`` int64 CPU tensors of length B. Every view is an independent
random resized crop (scale ``data.augment.crop_scale_min..max``, aspect 3/4..4/3, torchvision's rule) and
horizontal flip, done while decoding; the photometric half of the augmentation stays in
:class:`nrcc_scale.data.augment.BatchPhotometricAugment` on the device.

Two ways to make the V views (``decode=``):

* ``"once"`` (default): one FFCV pipeline whose decoder (``MultiViewCropDecoder``, an FFCV ``Operation``
  compiled by numba like FFCV's own) decodes each JPEG once, cuts all V crops from it and writes them in
  PyTorch's ``3 x R x R`` layout. JPEG decoding dominates the cost at ImageNet resolution, so this is
  close to V times cheaper than decoding per view, and it compiles once instead of V times.
* ``"per_view"``: FFCV's stock ops, one pipeline per view over the same ``image`` field
  (``RandomResizedCropRGBImageDecoder``, ``RandomHorizontalFlip``, ``ToTensor``, ``ToTorchImage``); each view
  decodes the image again.

Order and sharding (why not FFCV's own ``distributed=True``): FFCV 1.0.2's distributed orders build a
``torch.utils.data.DistributedSampler`` without ``num_replicas``/``rank``, so they need an initialised
process group, and they advance their own epoch counter at every ``__iter__`` (a resumed run would not see
the order it would have seen). Here a custom ``TraversalOrder`` (FFCV's documented extension point) serves,
for ``set_epoch(e)``, exactly the shard that ``DistributedSampler(num_replicas=world_size, rank=rank,
shuffle=True, seed=seed, drop_last=True)`` gives at epoch ``e``, the sampler the torchvision loader uses:
every worker gets a disjoint ``N // world_size`` share of a fresh permutation each epoch, the order is a
function of (seed, epoch) only, no process group is needed, and both loaders visit the same samples in
the same order. As with ``DistributedSampler``, call ``set_epoch`` before each epoch (the loop does).
``OrderOption.QUASI_RANDOM`` is not used (no distributed support, ffcv#92). The crops themselves come
from numba's per-thread generators and are not reproducible.

Also: PyTorch's thread count is left as the training process set it (FFCV would set it to its own thread
count); a loader refuses to start when FFCV's decode buffers (largest image x batch x batches in flight)
would exceed 16 GiB, naming ``--max-resolution`` as the fix. FFCV (and numba) is imported only when a
loader is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch

from nrcc_scale.config import DataConfig
from nrcc_scale.data.base import DataError
from nrcc_scale.data.ffcv_io import FIELDS, read_beton_fields
from nrcc_scale.utils.threads import keep_torch_threads

DECODE_MODES = ("once", "per_view")


def default_threads(world_size: int = 1) -> int:
    """Decoding threads when ``data.loader_workers`` is 0: the CPUs Ray gave this worker
    (``OMP_NUM_THREADS``, which Ray Train sets to the worker's CPU count), else this machine's cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, world_size))


def epoch_shard(num_samples: int, rank: int, world_size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample ids worker ``rank`` visits in ``epoch``, in order: DistributedSampler's shard."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))


@lru_cache(maxsize=1)
def _order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class EpochShardOrder(TraversalOrder):
        """Serves :func:`epoch_shard` for the epoch set by :meth:`set_epoch`, ignoring FFCV's counter.

        FFCV 1.0.2 instantiates a custom order by calling the object it is given with the loader
        (``order(loader)``), so the instance binds itself in ``__call__``.
        """

        def __init__(self, rank: int, world_size: int, seed: int) -> None:  # bound to a loader later
            self.rank, self.world_size, self.seed_value = rank, world_size, seed
            self.epoch = 0

        def __call__(self, loader) -> EpochShardOrder:
            super().__init__(loader)
            return self

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def sample_order(self, epoch: int) -> np.ndarray:
            shard = epoch_shard(len(self.indices), self.rank, self.world_size, self.seed_value, self.epoch)
            return self.indices[shard]

    return EpochShardOrder


def _random_crop(height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """(top, left, h, w) of a random resized crop, torchvision's rule (as SpatialAugment.crop_box);
    compiled by numba inside the decoder."""
    area = height * width
    for _ in range(10):
        target = area * np.random.uniform(scale_lo, scale_hi)
        aspect = np.exp(np.random.uniform(log_ratio_lo, log_ratio_hi))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = np.random.randint(0, height - h + 1)
            left = np.random.randint(0, width - w + 1)
            return top, left, h, w
    ratio = width / height
    lo, hi = np.exp(log_ratio_lo), np.exp(log_ratio_hi)
    if ratio < lo:
        w = width
        h = int(round(width / lo))
    elif ratio > hi:
        h = height
        w = int(round(height * hi))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_chw(image, out, flip):
    """Copy an ``H x W x 3`` crop into a ``3 x H x W`` view, mirrored left-right when ``flip`` (numba-compiled
    with the decoder, so the loader hands out PyTorch's layout without another pass over the batch)."""
    height, width = image.shape[0], image.shape[1]
    for r in range(height):
        for c in range(width):
            src = width - 1 - c if flip else c
            for k in range(3):
                out[k, r, c] = image[r, src, k]


@lru_cache(maxsize=1)
def _multi_view_decoder_class():
    from dataclasses import replace

    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class MultiViewCropDecoder(Operation):
        """Decode an ``RGBImageField`` image once and cut ``num_views`` random resized crops (each flipped
        with probability ``flip_p``): output ``num_views x 3 x R x R`` uint8 per sample."""

        def __init__(self, resolution: int, num_views: int, scale: tuple[float, float],
                     ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> None:
            super().__init__()
            self.resolution, self.num_views = int(resolution), int(num_views)
            self.scale, self.ratio, self.flip_p = scale, ratio, float(flip_p)

        def declare_state_and_memory(self, previous_state):
            pixels = self.metadata["height"].astype(np.uint64) * self.metadata["width"].astype(np.uint64)
            side = self.resolution
            out_shape = (self.num_views, 3, side, side)
            u1 = np.dtype("<u1")
            # per sample: the output, the decoded image, and one crop in HWC before its CHW copy
            return (replace(previous_state, jit_mode=True, shape=out_shape, dtype=u1),
                    (AllocationQuery(out_shape, u1), AllocationQuery((int(pixels.max()) * 3,), u1),
                     AllocationQuery((side, side, 3), u1)))

        def generate_code(self):
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            # compiled afresh for every loader, as FFCV's own decoders are: a numba dispatcher shared by two
            # loaders' pipelines fails (KeyError in numba 0.68's overload table) when the second one compiles
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)
            crop_c = Compiler.compile(_random_crop)
            to_chw_c = Compiler.compile(_to_chw)
            num_views, flip_p = self.num_views, self.flip_p
            scale_lo, scale_hi = float(self.scale[0]), float(self.scale[1])
            log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
            jpg = 0  # ffcv.fields.rgb_image.IMAGE_MODES["jpg"]

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, crop_storage = my_storage
                for dst_ix in my_range(len(batch_indices)):
                    field = metadata[batch_indices[dst_ix]]
                    data = mem_read(field["data_ptr"], storage_state)
                    height = np.int64(field["height"])
                    width = np.int64(field["width"])
                    if field["mode"] == jpg:
                        buffer = temp_storage[dst_ix]
                        imdecode_c(data, buffer, np.uint32(height), np.uint32(width), np.uint32(height),
                                   np.uint32(width), 0, 0, 1, 1, False, False)
                        image = buffer[: 3 * height * width].reshape(height, width, 3)
                    else:
                        image = data.reshape(height, width, 3)
                    crop = crop_storage[dst_ix]
                    for v in range(num_views):
                        top, left, h, w = crop_c(height, width, scale_lo, scale_hi, log_lo, log_hi)
                        resize_crop_c(image, top, top + h, left, left + w, crop)
                        to_chw_c(crop, destination[dst_ix, v], np.random.random() < flip_p)
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    return MultiViewCropDecoder


def _clamped_threads(threads: int) -> int:
    import numba

    return max(1, min(int(threads), int(numba.config.NUMBA_NUM_THREADS)))


class FFCVTrainLoader:
    """FFCV counterpart of :class:`nrcc_scale.data.torchvision_loader.EpochLoader` (see the module
    docstring).

    ``batch_size`` is per worker; ``data.beton`` names the file, ``data.loader_workers`` the decoding
    threads (0: :func:`default_threads`). ``expected_samples`` (optional) checks the file against the
    training split it is meant to hold.
    """

    def __init__(self, cfg: DataConfig, resolution: int, num_views: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: torch.device | str = "cpu", *,
                 decode: str = "once", threads: int | None = None, expected_samples: int | None = None,
                 os_cache: bool = True, batches_ahead: int = 3) -> None:
        from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

        if decode not in DECODE_MODES:
            raise ValueError(f"decode = {decode!r}: allowed values are {', '.join(DECODE_MODES)}")
        if num_views < 1 or resolution < 1 or batch_size < 1:
            raise ValueError("num_views, resolution and batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        path = os.path.expanduser(cfg.beton)
        num_samples, names = read_beton_fields(path)
        missing = [f for f in FIELDS if f not in names]
        if missing:
            raise DataError(f"{path} lacks the field(s) {', '.join(missing)} (has {', '.join(names)}); write "
                            "it with `python -m nrcc_scale.data prepare`")
        if expected_samples is not None and expected_samples != num_samples:
            raise DataError(f"{path} holds {num_samples} images but the training split has "
                            f"{expected_samples}; write the .beton again for this data set and split "
                            "(prepare --split train)")
        per_worker = num_samples // world_size
        if per_worker < batch_size:
            raise DataError(f"{path}: {num_samples} images give each of {world_size} worker(s) {per_worker}, "
                            f"fewer than one batch of {batch_size}")

        self.path, self.num_views, self.decode = path, num_views, decode
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_samples = num_samples
        self.device = torch.device(device)
        self.threads = _clamped_threads(threads or cfg.loader_workers or default_threads(world_size))
        aug = cfg.augment
        scale = (float(aug.crop_scale_min), float(aug.crop_scale_max))
        on_gpu = self.device.type == "cuda"
        to_device = [ToDevice(self.device, non_blocking=True)] if on_gpu else []

        pipelines: dict[str, object] = {
            "index": [IntDecoder(), ToTensor()],
            "label": [IntDecoder(), ToTensor()],
            "image": None,  # read only through the view pipelines below
        }
        if decode == "once":
            decoder = _multi_view_decoder_class()(resolution, num_views, scale, flip_p=aug.flip_p)
            pipelines["views"] = PipelineSpec("image", decoder=decoder, transforms=[ToTensor(), *to_device])
            self._view_keys = ["views"]
        else:
            self._view_keys = [f"view{v}" for v in range(num_views)]
            for key in self._view_keys:
                pipelines[key] = PipelineSpec(
                    "image", decoder=RandomResizedCropRGBImageDecoder((resolution, resolution), scale=scale),
                    transforms=[RandomHorizontalFlip(aug.flip_p), ToTensor(), *to_device, ToTorchImage()])

        self.order = _order_class()(rank, world_size, seed)
        # FFCV sets torch's intra-op thread count to its decoding thread count (here and in every __iter__);
        # the training process keeps its own (Ray sets it to the worker's CPUs): too many torch threads next
        # to FFCV's on the same cores make small tensor ops orders of magnitude slower
        with keep_torch_threads():
            self.loader = Loader(path, batch_size=batch_size, num_workers=self.threads, os_cache=os_cache,
                                 order=self.order, distributed=world_size > 1, seed=seed, pipelines=pipelines,
                                 drop_last=True, batches_ahead=batches_ahead)
        # decode buffers are allocated when an epoch starts: check their size before that
        _check_decode_memory(self.loader.reader, path, batch_size, batches_ahead,
                             num_views if decode == "per_view" else 1)
        outputs = list(self.loader.pipeline_specs)
        self._index_pos = outputs.index("index")
        self._label_pos = outputs.index("label")
        self._view_pos = [outputs.index(k) for k in self._view_keys]

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The sample ids this worker visits in ``epoch`` (before dropping the last partial batch)."""
        return epoch_shard(self.num_samples, self.rank, self.world_size, self.order.seed_value, epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with keep_torch_threads():
            batches = iter(self.loader)
        for batch in batches:
            # FFCV reuses its output buffers a few batches later, so everything handed out is a copy. CPU
            # copies go through numpy: torch's multi-threaded copy of a small tensor, competing with FFCV's
            # decoding threads, costs more than the decoding.
            indices = _copy(batch[self._index_pos].reshape(-1))
            labels = _copy(batch[self._label_pos].reshape(-1))
            if self.decode == "once":
                views = _copy(batch[self._view_pos[0]])  # already B x V x 3 x R x R
            elif batch[self._view_pos[0]].device.type == "cpu":
                views = torch.from_numpy(np.stack([batch[p].numpy() for p in self._view_pos], axis=1))
            else:
                views = torch.stack([batch[p] for p in self._view_pos], dim=1)
            yield views, labels, indices


MAX_DECODE_BUFFER = 16 << 30  # bytes of FFCV decode buffers beyond which a loader refuses to start


def _check_decode_memory(reader, path: str, batch_size: int, batches_ahead: int, copies: int) -> None:
    """FFCV's decoders hold a buffer of the largest image per sample of every batch in flight; a .beton of
    full-size photos would need tens of GB. Say so instead of letting the process be killed."""
    image = reader.metadata[f"f{reader.field_names.index('image')}"]
    height, width = int(image["height"].max()), int(image["width"].max())
    need = height * width * 3 * batch_size * (batches_ahead + 2) * copies
    if need > MAX_DECODE_BUFFER:
        raise DataError(f"{path}: images up to {width}x{height} px need {need / 2**30:.0f} GiB of decode "
                        f"buffers at batch {batch_size}; write the file with a smaller --max-resolution "
                        "(e.g. 256 or 512) or lower the batch size")


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == "cpu":
        return torch.from_numpy(np.array(tensor.numpy(), copy=True))
    return tensor.clone()
