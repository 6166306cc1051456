"""Run a model package's U-Net on a prepared input and return class probabilities.

A :class:`Predictor` holds one :class:`inference.unet.UNet3D` in eval mode on
its device so the worker keeps it warm between jobs; :class:`PredictorCache`
keeps the last few. Input and output arrays are ``[z, y, x]`` on the model
grid (see :mod:`inference.preprocess`).

Inference strategy (the card's ``inference`` section,
:class:`model_store.card.InferenceSettings`):

- ``sliding_window`` (the default): windows of the card's ``patch_size`` with
  ``overlap`` (fraction of a patch) between them and Gaussian weighting
  (sigma = patch / 8, as nnU-Net) of each window's softmax;
- ``whole_volume``: one forward pass when the input, padded up to a multiple
  of ``2 ** (levels - 1)``, has at most ``max_whole_volume_voxels`` voxels,
  the sliding window otherwise. Faster, but a network trained on patches
  scores lower on whole volumes (hn-oar 1.0.0: mean Dice 0.633 vs 0.686).

With ``crop_to_foreground`` the network sees only the bounding box of the
voxels above the input's minimum (after CT clipping: the patient and the
couch) plus a margin; the rest of the output is background with probability 1.

Precision: ``"auto"`` is bf16 autocast on a CPU with AVX512-BF16 or AMX, fp16
autocast on CUDA (bf16 when the GPU supports it), fp32 otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from contourd.errors import InferenceError
from inference.postprocess import foreground_box
from inference.precision import Precision, resolve_device, resolve_precision
from inference.unet import UNet3D
from model_store.card import Architecture

log = logging.getLogger(__name__)

DEFAULT_MAX_WHOLE_VOLUME_VOXELS = 160 * 160 * 160


class UNetModel(Protocol):
    """What a predictor needs from an approved model (``model_store.registry.ApprovedModel``)."""

    @property
    def card(self) -> Any: ...

    @property
    def weights_sha256(self) -> str | None: ...

    def load_state_dict(self) -> Mapping[str, torch.Tensor]: ...


def gaussian_weights(patch_zyx: tuple[int, int, int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Importance map for sliding-window blending, peak 1 at the patch centre."""
    axes = []
    for n in patch_zyx:
        coords = np.arange(n, dtype=np.float32) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def _window_starts(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def predictor_options(card: Any) -> dict[str, Any]:
    """The :class:`Predictor` keyword arguments a U-Net card fixes.

    Patch size from ``preprocessing``; overlap, crop, mirror TTA and the
    whole-volume limit (0, i.e. always the window, unless the strategy is
    ``whole_volume``) from its ``inference`` section.
    """
    settings = card.inference
    return {
        "patch_size_zyx": tuple(card.preprocessing.patch_size),
        "overlap": settings.overlap,
        "crop_to_foreground": settings.crop_to_foreground,
        "crop_margin_voxels": settings.crop_margin_voxels,
        "mirror_class_order": card.mirror_class_order() if settings.mirror_left_right else None,
        "max_whole_volume_voxels": (
            settings.max_whole_volume_voxels if settings.strategy == "whole_volume" else 0
        ),
    }


class Predictor:
    """A warm U-Net on one device.

    Parameters
    ----------
    state_dict
        Weights of :class:`~inference.unet.UNet3D` (safetensors tensors).
    config
        The network's architecture.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
    precision
        ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast dtype).
    num_threads
        torch intra-op threads on CPU (``None`` keeps torch's setting).
    patch_size_zyx
        Sliding-window patch in voxels (multiple of the size divisor).
    max_whole_volume_voxels
        Largest padded input run in one pass; bigger inputs use the window
        (0: always the window).
    overlap
        Fraction of a patch shared by neighbouring windows (0 <= overlap < 1).
    crop_to_foreground
        Run the network only inside the box of voxels above the input's
        minimum, grown by ``crop_margin_voxels`` (model-grid voxels).
    mirror_class_order
        When given, mirror test-time augmentation: the input is also run
        mirrored along x (patient left-right), the output mirrored back, its
        classes reordered by this permutation (left/right pairs swapped) and
        averaged with the plain output.
    """

    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        config: Architecture,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        num_threads: int | None = None,
        patch_size_zyx: tuple[int, int, int] = (96, 96, 96),
        max_whole_volume_voxels: int = DEFAULT_MAX_WHOLE_VOLUME_VOXELS,
        overlap: float = 0.25,
        crop_to_foreground: bool = False,
        crop_margin_voxels: int = 4,
        mirror_class_order: list[int] | None = None,
    ) -> None:
        if not 0 <= overlap < 1:
            raise InferenceError(f"overlap {overlap} must be in [0, 1)")
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.config = config
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.patch_size_zyx = tuple(int(p) for p in patch_size_zyx)
        if any(p % config.size_divisor for p in self.patch_size_zyx):
            raise InferenceError(
                f"patch size {list(self.patch_size_zyx)} is not a multiple of "
                f"{config.size_divisor} (2 ** (levels - 1)); fix the card's patch_size"
            )
        self.max_whole_volume_voxels = int(max_whole_volume_voxels)
        self.overlap = float(overlap)
        self.crop_to_foreground = bool(crop_to_foreground)
        self.crop_margin_voxels = int(crop_margin_voxels)
        if mirror_class_order is not None and sorted(mirror_class_order) != list(
            range(config.num_classes)
        ):
            raise InferenceError(
                f"mirror class order {mirror_class_order} is not a permutation of the "
                f"{config.num_classes} classes; fix the card's ROI labels and laterality"
            )
        self.mirror_class_order = mirror_class_order
        net = UNet3D(config)
        try:
            net.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as err:
            raise InferenceError(
                f"weights do not fit the card's architecture {config}: {err}; the package's "
                "model.yaml and weights.safetensors disagree"
            ) from err
        self.net = net.to(self.device).eval()
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: UNetModel, **kwargs: Any) -> Predictor:
        """Build from an approved model package (its card and safetensors weights)."""
        card = model.card
        if card.architecture is None or card.preprocessing is None:
            raise InferenceError(
                f"model {card.name} {card.version} is {card.model_type!r}, not a U-Net"
            )
        for key, value in predictor_options(card).items():
            kwargs.setdefault(key, value)
        return cls(model.load_state_dict(), card.architecture, **kwargs)

    @property
    def precision_name(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(1, C, z, y, x)`` float32 on the device."""
        x = batch.to(self.device, non_blocking=True)
        if self.dtype == torch.float32:
            logits = self.net(x)
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                logits = self.net(x)
        return torch.softmax(logits.float(), dim=1)

    def predict_proba(
        self, image_zyx: np.ndarray, *, force_sliding_window: bool = False
    ) -> np.ndarray:
        """Class probabilities for a normalised input.

        Parameters
        ----------
        image_zyx
            float32 ``[z, y, x]`` (one channel) on the model grid.
        force_sliding_window
            Use the sliding window even when the whole volume fits.

        Returns
        -------
        numpy.ndarray
            float32 ``[class, z, y, x]``, summing to 1 over classes.
        """
        if image_zyx.ndim != 3:
            raise InferenceError(f"input has shape {image_zyx.shape}; expected [z, y, x]")
        image = np.asarray(image_zyx, dtype=np.float32)
        box = foreground_box(image, self.crop_margin_voxels) if self.crop_to_foreground else None
        with self._lock, torch.inference_mode():
            if box is None:
                return self._predict(image, force_sliding_window)
            inside = self._predict(np.ascontiguousarray(image[box]), force_sliding_window)
        out = np.zeros((self.config.num_classes, *image.shape), dtype=np.float32)
        out[0] = 1.0
        out[(slice(None), *box)] = inside
        return out

    def _predict(self, image: np.ndarray, force_window: bool) -> np.ndarray:
        probs = self._predict_once(image, force_window)
        if self.mirror_class_order is None:
            return probs
        mirrored = self._predict_once(np.ascontiguousarray(image[:, :, ::-1]), force_window)
        probs += mirrored[self.mirror_class_order][:, :, :, ::-1]
        probs *= 0.5
        return probs

    def _predict_once(self, image: np.ndarray, force_window: bool) -> np.ndarray:
        shape = image.shape
        div = self.config.size_divisor
        padded = tuple(int(-(-s // div) * div) for s in shape)
        pad_value = float(image.min())
        whole = int(np.prod(padded)) <= self.max_whole_volume_voxels and not force_window
        if not whole:
            padded = tuple(max(p, q) for p, q in zip(padded, self.patch_size_zyx, strict=True))
        buf = np.full(padded, pad_value, dtype=np.float32)
        buf[: shape[0], : shape[1], : shape[2]] = image
        tensor = torch.from_numpy(buf)[None, None]
        probs = self._forward(tensor)[0] if whole else self._sliding_window(tensor)
        out = probs[:, : shape[0], : shape[1], : shape[2]].cpu().numpy()
        return np.ascontiguousarray(out, dtype=np.float32)

    def _sliding_window(self, tensor: torch.Tensor) -> torch.Tensor:
        _, _, nz, ny, nx = tensor.shape
        pz, py, px = self.patch_size_zyx
        steps = [max(1, int(p * (1 - self.overlap))) for p in (pz, py, px)]
        weights = torch.from_numpy(gaussian_weights((pz, py, px))).to(self.device)
        acc = torch.zeros((self.config.num_classes, nz, ny, nx), device=self.device)
        norm = torch.zeros((nz, ny, nx), device=self.device)
        for z in _window_starts(nz, pz, steps[0]):
            for y in _window_starts(ny, py, steps[1]):
                for x in _window_starts(nx, px, steps[2]):
                    patch = tensor[:, :, z : z + pz, y : y + py, x : x + px]
                    probs = self._forward(patch)[0]
                    acc[:, z : z + pz, y : y + py, x : x + px] += probs * weights
                    norm[z : z + pz, y : y + py, x : x + px] += weights
        acc /= norm
        return acc


class PredictorCache:
    """Keeps the last ``max_models`` predictors warm, keyed by model and settings."""

    def __init__(self, max_models: int = 2) -> None:
        self.max_models = max_models
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: UNetModel, **kwargs: Any) -> Any:
        """The warm predictor for ``model`` with ``kwargs``, building it if needed.

        A :class:`Predictor` for a ``unet`` card, an
        :class:`inference.nnunet_runtime.NnunetPredictor` for an ``nnunet`` one.
        """
        card = model.card
        key = (card.name, card.version, model.weights_sha256, tuple(sorted(kwargs.items())))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            predictor: Any
            if card.model_type == "nnunet":
                from inference.nnunet_runtime import NnunetPredictor

                predictor = NnunetPredictor.from_model(model, **kwargs)
            else:
                predictor = Predictor.from_model(model, **kwargs)
            self._items[key] = predictor
            while len(self._items) > self.max_models:
                self._items.popitem(last=False)
            log.info(
                "model %s %s loaded on %s (%s)",
                card.name,
                card.version,
                predictor.device,
                predictor.precision_name,
            )
            return predictor

    def __len__(self) -> int:
        return len(self._items)
