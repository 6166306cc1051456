"""Run an imported nnU-Net v2 model on a series: ``exact`` and ``fast`` modes.

``exact`` reproduces ``nnUNetPredictor`` step by step, on the array as
SimpleITK gives it (after ``DICOMOrient`` to the card's ``orientation``):

1. transpose by ``transpose_forward``;
2. crop to the bounding box of the nonzero voxels (holes filled);
3. normalise (``CTNormalization``: clip to the training foreground's 0.5 and
   99.5 percentiles, subtract its mean, divide by its standard deviation;
   ``ZScoreNormalization``: the image's own mean and standard deviation);
4. resample to the plans' spacing (:mod:`inference.nnunet_resampling`,
   spline order 3, the thick-slice axis separately with order 0);
5. sliding window of the plans' patch, step 0.5 of the patch, each window's
   logits weighted by a Gaussian (sigma = patch / 8), padding with 0 where the
   image is smaller than the patch, mirrored test-time augmentation over the
   checkpoint's mirror axes (all combinations averaged), logits averaged over
   folds;
6. resample the logits back to the cropped shape (order 1), argmax, put the
   crop back, transpose back.

``fast`` is ours: the same network and steps, but the image is also cropped
to the patient (the box of voxels above the normalised image's lowest value,
plus a margin), the logits are resampled back linearly with torch on all
threads (the input too with ``fast.resampling_order: 1``; a thick-slice axis
nearest-neighbour, as nnU-Net's ``order_z`` 0 does it), windows step
further (0.75 of the patch by default) and mirroring is off unless the
card's ``fast.mirror`` says otherwise. Precision ``auto``: fp32 on CPUs without
native bf16 (bf16 is emulated and far slower there), bf16 where the CPU has it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes, gaussian_filter

from contourd.errors import InferenceError
from inference.nnunet_network import split_folds
from inference.nnunet_resampling import (
    argmax_of_resampled,
    linear_nearest_axis,
    new_shape_for,
    resample_linear_torch,
    resample_to_shape,
)
from inference.postprocess import foreground_box, mask_bounding_box
from inference.precision import Precision, resolve_device, resolve_precision
from model_store.network_layout import build_network
from model_store.nnunet_card import NnunetNormalization, NnunetSettings

log = logging.getLogger(__name__)

Mode = Literal["exact", "fast"]


def nnunet_gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Importance map: a unit impulse at the patch centre (``n // 2``) blurred with sigma
    ``n * sigma_scale`` (zero padding), peak scaled to 1, zeros raised to the smallest
    nonzero value."""
    impulse = np.zeros(patch, dtype=np.float64)
    impulse[tuple(n // 2 for n in patch)] = 1.0
    weights = gaussian_filter(impulse, [n * sigma_scale for n in patch], 0, mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights.astype(np.float32)


def window_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    """Window starts along one axis: as few as reach ``step_fraction * patch`` apart, evenly
    spread between 0 and ``size - patch``."""
    count = int(np.ceil((size - patch) / (patch * step_fraction))) + 1
    if count == 1:
        return [0]
    step = (size - patch) / (count - 1)
    return [int(np.round(step * i)) for i in range(count)]


def normalise_nnunet(
    image: np.ndarray, nonzero: np.ndarray, norm: NnunetNormalization
) -> np.ndarray:
    """nnU-Net's normalisation of one channel (float32, in place when possible)."""
    image = image.astype(np.float32, copy=False)
    if norm.scheme == "CTNormalization":
        if None in (norm.mean, norm.std, norm.percentile_00_5, norm.percentile_99_5):
            raise InferenceError("CTNormalization needs the card's intensity properties")
        np.clip(image, norm.percentile_00_5, norm.percentile_99_5, out=image)
        image -= np.float32(norm.mean)
        image /= np.float32(max(float(norm.std), 1e-8))  # type: ignore[arg-type]
        return image
    if norm.use_mask_for_norm:
        values = image[nonzero]
        mean, std = values.mean(), values.std()
        image[nonzero] = (values - mean) / max(float(std), 1e-8)
        return image
    mean, std = image.mean(), image.std()
    image -= mean
    image /= max(float(std), 1e-8)
    return image


@dataclass(frozen=True)
class RunSettings:
    """How one call runs: the mode's sliding-window step, mirror axes, crop and resampling."""

    mode: Mode
    tile_step_size: float
    mirror_axes: tuple[int, ...]
    crop_margin_voxels: int | None  # None: no crop to the patient
    linear_input_resampling: bool  # torch linear instead of nnU-Net's spline for the input
    linear_logit_resampling: bool  # torch linear instead of nnU-Net's for the logits


class NnunetPredictor:
    """A warm nnU-Net network with every fold's weights, on one device.

    Parameters
    ----------
    settings
        The card's ``nnunet`` section.
    num_classes
        Background plus the card's labels.
    fold_states
        One state dict per fold (``settings.folds`` order).
    device, precision, num_threads
        As :class:`inference.predictor.Predictor`.
    """

    def __init__(
        self,
        settings: NnunetSettings,
        num_classes: int,
        fold_states: list[dict[str, torch.Tensor]],
        *,
        device: str = "auto",
        precision: Precision = "auto",
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.settings = settings
        self.num_classes = num_classes
        self.device = resolve_device(device)
        self.precision = precision
        net = build_network(settings, num_classes)
        for fold, state in zip(settings.folds, fold_states, strict=True):
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise InferenceError(
                    f"fold {fold} weights do not fit the card's nnU-Net network: {err}"
                ) from err
        self.net = net.to(self.device).eval()
        self.fold_states = [{k: v.to(self.device) for k, v in s.items()} for s in fold_states]
        self.gaussian = torch.from_numpy(nnunet_gaussian(settings.patch_size)).to(self.device)
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> NnunetPredictor:
        """Build from an approved ``nnunet`` model (its card and checked safetensors weights)."""
        card = model.card
        if card.nnunet is None:
            raise InferenceError(f"model {card.name} {card.version} is not an nnU-Net model")
        kwargs.pop("max_whole_volume_voxels", None)  # a U-Net option; nnU-Net always windows
        states = split_folds(model.load_state_dict(), list(card.nnunet.folds))
        return cls(card.nnunet, len(card.rois) + 1, states, **kwargs)

    @property
    def precision_name(self) -> str:
        """The precision setting (``exact`` mode runs fp32 on CPU whatever it says)."""
        return str(self.precision)

    def run_settings(self, mode: Mode, *, mirror: bool | None = None) -> RunSettings:
        """The settings of ``mode`` (``mirror`` overrides the mode's mirroring)."""
        s = self.settings
        if mode == "exact":
            use_mirror = True if mirror is None else mirror
            return RunSettings(
                mode,
                s.tile_step_size,
                tuple(s.mirror_axes) if use_mirror else (),
                None,
                linear_input_resampling=False,
                linear_logit_resampling=False,
            )
        fast = s.fast
        use_mirror = fast.mirror if mirror is None else mirror
        return RunSettings(
            mode,
            fast.tile_step_size,
            tuple(s.mirror_axes) if use_mirror else (),
            fast.crop_margin_voxels if fast.crop_to_patient else None,
            linear_input_resampling=fast.resampling_order == 1,
            linear_logit_resampling=True,
        )

    def dtype(self, mode: Mode) -> torch.dtype:
        """fp32 in exact mode on CPU (nnU-Net's CPU path); ``precision`` otherwise."""
        if mode == "exact" and self.precision == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.float32
        return resolve_precision(self.precision, self.device)

    def segment(
        self,
        image: np.ndarray,
        spacing_mm: tuple[float, float, float],
        run: RunSettings,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Label map (uint8 ``0..N``) for one image.

        Parameters
        ----------
        image
            ``[a0, a1, a2]`` in the model's orientation (HU for CT), before transposition.
        spacing_mm
            Its spacing in the same axis order, mm.
        run
            From :meth:`run_settings`.
        """
        s = self.settings
        tf, tb = list(s.transpose_forward), list(s.transpose_backward)
        data = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(tf))
        spacing = tuple(float(spacing_mm[i]) for i in tf)
        full_shape = data.shape
        nonzero = binary_fill_holes(data != 0)
        box = mask_bounding_box(nonzero) or tuple(slice(0, n) for n in full_shape)
        data, nonzero = data[box], nonzero[box]
        data = normalise_nnunet(data.copy(), nonzero, s.normalization)
        if run.crop_margin_voxels is not None:
            inner = foreground_box(data, run.crop_margin_voxels)
            if inner is not None:
                box = tuple(
                    slice(b.start + i.start, b.start + i.stop)
                    for b, i in zip(box, inner, strict=True)
                )
                data = np.ascontiguousarray(data[inner])
        cropped_shape = data.shape
        target = tuple(float(v) for v in s.spacing_mm)
        net_shape = new_shape_for(cropped_shape, spacing, target)
        if run.linear_input_resampling:
            nearest = linear_nearest_axis(s.resampling_data, spacing, target)
            prepared = resample_linear_torch(data[None], net_shape, nearest)
        else:
            prepared = resample_to_shape(data[None], net_shape, spacing, target, s.resampling_data)
        del data, nonzero  # the network's input is ``prepared`` from here on
        with self._lock, torch.inference_mode():
            logits = self._logits(torch.from_numpy(np.ascontiguousarray(prepared)), run)
        del prepared
        # Class by class: the back-resampled logits of every class at the CT's size
        # (4 bytes x classes x voxels) are never held at once.
        cropped_labels = argmax_of_resampled(
            logits, cropped_shape, target, spacing, s.resampling_probabilities,
            linear=run.linear_logit_resampling,
        )  # fmt: skip
        del logits
        labels = np.zeros(full_shape, dtype=np.uint8)
        labels[box] = cropped_labels
        return np.ascontiguousarray(labels.transpose(tb))

    def _logits(self, data: torch.Tensor, run: RunSettings) -> np.ndarray:
        """Fold-averaged sliding-window logits ``[class, a0, a1, a2]`` (float32)."""
        total: torch.Tensor | None = None
        for state in self.fold_states:
            self.net.load_state_dict(state, strict=True)
            logits = self._sliding_window(data, run)
            total = logits if total is None else total + logits
        assert total is not None
        if len(self.fold_states) > 1:
            total /= len(self.fold_states)
        return total.cpu().numpy()

    def _network(self, patch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype == torch.float32:
            return self.net(patch).float()
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            return self.net(patch).float()

    def _mirrored(self, patch: torch.Tensor, run: RunSettings, dtype: torch.dtype) -> torch.Tensor:
        out = self._network(patch, dtype)
        axes = [a + 2 for a in run.mirror_axes]
        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for combo in combos:
            out += torch.flip(self._network(torch.flip(patch, combo), dtype), combo)
        if combos:
            out /= len(combos) + 1
        return out

    def _sliding_window(self, data: torch.Tensor, run: RunSettings) -> torch.Tensor:
        """``data`` is ``[1, a0, a1, a2]``; returns ``[class, a0, a1, a2]`` logits."""
        patch = self.settings.patch_size
        shape = data.shape[1:]
        pads = [max(p - n, 0) for p, n in zip(patch, shape, strict=True)]
        below = [d // 2 for d in pads]
        pad_arg: list[int] = []
        for d, lo in zip(reversed(pads), reversed(below), strict=True):
            pad_arg += [lo, d - lo]
        padded = torch.nn.functional.pad(data, pad_arg, value=0.0) if any(pads) else data
        padded = padded.to(self.device)
        size = padded.shape[1:]
        dtype = self.dtype(run.mode)
        acc = torch.zeros((self.num_classes, *size), dtype=torch.float32, device=self.device)
        norm = torch.zeros(tuple(size), dtype=torch.float32, device=self.device)
        starts = [window_starts(n, p, run.tile_step_size) for n, p in zip(size, patch, strict=True)]
        for a, b, c in itertools.product(*starts):
            sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            window = padded[(slice(None), *sl)][None]
            logits = self._mirrored(window, run, dtype)[0]
            acc[(slice(None), *sl)] += logits * self.gaussian
            norm[sl] += self.gaussian
        acc /= norm
        crop = tuple(slice(lo, lo + n) for lo, n in zip(below, shape, strict=True))
        return acc[(slice(None), *crop)]
