"""Train a :class:`inference.unet.UNet3D` with nnU-Net's recipe on a CPU or GPU.

SGD with Nesterov momentum 0.99 (or AdamW, ``optimizer: adamw``), polynomial learning-rate decay
``lr = lr0 * (1 - step / max_steps) ** 0.9``, Dice + cross-entropy with
partial labels (:mod:`training.losses`), augmented patches
(:mod:`training.augmentation`), bf16 autocast on the CPU (fp16/bf16 on CUDA),
periodic validation on whole volumes, early stopping when the validation loss
stops improving, checkpoints (safetensors + JSON, no pickle) that a later run
resumes, a tqdm progress bar and a loss-curve PNG.

Run: ``python -m training.trainer --config training/configs/hn-oar.yaml --run-dir DIR``
(``contourd train`` wraps the same code).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from contourd.errors import TrainingError, cli_error_exit
from inference.precision import resolve_precision
from inference.unet import UNet3D
from training.augmentation import AugmentationConfig, sample_patch
from training.config import TrainingConfig, load_training_config
from training.losses import dice_ce_loss
from training.openkbp_dataset import TrainingCase

log = logging.getLogger(__name__)


def normalise_hu(image_hu: np.ndarray, min_hu: float, max_hu: float) -> np.ndarray:
    """Clip HU to ``[min_hu, max_hu]`` and map linearly to ``[-1, 1]`` (``ct_clip_scale``)."""
    clipped = np.clip(image_hu.astype(np.float32), min_hu, max_hu)
    return (2.0 * (clipped - min_hu) / (max_hu - min_hu) - 1.0).astype(np.float32)


def pad_to_multiple(
    x: torch.Tensor, divisor: int, minimum: Sequence[int] = (0, 0, 0)
) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """Pad the last three axes (end side) to multiples of ``divisor``; return the crop back."""
    shape = x.shape[-3:]
    target = [max(math.ceil(s / divisor) * divisor, m) for s, m in zip(shape, minimum, strict=True)]
    pad: list[int] = []
    for s, t in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, t - s]
    crop = (Ellipsis, slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    return torch.nn.functional.pad(x, pad, value=float(x.min()) if x.numel() else 0.0), crop


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 autocast where the hardware runs bf16 natively, else fp32 (disabled).

    On a CPU without AVX512-BF16 or AMX (e.g. AVX2 only) bf16 convolutions are
    emulated and measured ~50x slower than fp32, so autocast is switched off
    there; CUDA uses bf16 when the GPU supports it. The choice is
    :func:`inference.precision.resolve_precision`'s ``"auto"``.
    """
    dtype = resolve_precision("auto", device)
    if dtype != torch.bfloat16:  # no fp16 training: it would need a gradient scaler
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


class Trainer:
    """One training run with checkpoints in ``run_dir``."""

    def __init__(self, config: TrainingConfig, run_dir: Path, device: str = "auto") -> None:
        self.config = config
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        torch.set_num_threads(config.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shape: pick the fastest kernels
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = UNet3D(config.architecture()).to(self.device)
        self.optimizer: torch.optim.Optimizer
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                self.model.parameters(),
                lr=config.learning_rate,
                momentum=config.momentum,
                nesterov=True,
                weight_decay=config.weight_decay,
            )
        self.aug = AugmentationConfig(**config.augmentation)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best_val_loss = math.inf
        self.evals_without_improvement = 0
        self.elapsed_s = 0.0
        self.best_mean_dice = -math.inf
        self._mirror_order = torch.tensor(config.mirror_class_order(), device=self.device)
        self._volume_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Model and optimizer momentum as safetensors, counters as JSON (atomic)."""
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
        }
        for i, p in enumerate(self.model.parameters()):
            for key, value in self.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    name = "momentum" if key == "momentum_buffer" else f"opt_{key}"
                    tensors[f"{name}.{i}"] = value.detach().cpu().contiguous().reshape(value.shape)
        tmp = self.run_dir / "checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.run_dir / "checkpoint.safetensors")
        meta = {
            "step": self.step,
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_mean_dice": self.best_mean_dice,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_s": self.elapsed_s,
            "rng_state": self.rng.bit_generator.state,
        }
        tmp_meta = self.run_dir / "checkpoint.json.tmp"
        tmp_meta.write_text(json.dumps(meta, default=_json_default))
        tmp_meta.replace(self.run_dir / "checkpoint.json")

    def try_resume(self) -> bool:
        """Resume from ``run_dir/checkpoint.*`` when present."""
        ckpt = self.run_dir / "checkpoint.safetensors"
        meta_path = self.run_dir / "checkpoint.json"
        if not (ckpt.is_file() and meta_path.is_file()):
            return False
        tensors = load_file(str(ckpt))
        self.model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        for i, p in enumerate(self.model.parameters()):
            for name, tensor in tensors.items():
                prefix, _, index = name.rpartition(".")
                if index != str(i) or not (prefix == "momentum" or prefix.startswith("opt_")):
                    continue
                key = "momentum_buffer" if prefix == "momentum" else prefix[len("opt_") :]
                self.optimizer.state[p][key] = tensor.to(self.device)
        meta = json.loads(meta_path.read_text())
        self.step = int(meta["step"])
        self.history = meta["history"]
        self.best_val_loss = float(meta["best_val_loss"])
        self.best_mean_dice = float(meta.get("best_mean_dice", -math.inf))
        self.evals_without_improvement = int(meta["evals_without_improvement"])
        self.elapsed_s = float(meta.get("elapsed_s", 0.0))
        self.rng.bit_generator.state = meta["rng_state"]
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    def load_initial_weights(self, path: Path) -> None:
        """Warm-start the model from a safetensors state dict (fp16 or fp32).

        Raises
        ------
        TrainingError
            When the file is missing or its tensors do not fit this run's U-Net
            (different ROI count, base channels or levels).
        """
        if not path.is_file():
            raise TrainingError(
                f"init_weights {path} does not exist; give a run's best.safetensors "
                "or a model package's weights file, or remove init_weights"
            )
        state = load_file(str(path))
        own = self.model.state_dict()
        mismatched = sorted(
            k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)
        )
        if mismatched:
            raise TrainingError(
                f"init_weights {path} does not fit this run's U-Net: {len(mismatched)} tensors "
                f"missing or of another shape (first: {mismatched[0]}); the ROI list, "
                "base_channels, levels and max_channels must match the model it came from"
            )
        self.model.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
        log.info("warm start from %s", path)

    def start(self, *, resume: bool) -> None:
        """Pick the starting weights: this run's checkpoint, else ``init_weights``.

        With ``resume`` and a checkpoint in ``run_dir`` the run continues from
        it; otherwise, when the config names ``init_weights``, the model is
        warm-started from them; otherwise it keeps its random initialisation.
        """
        if resume and self.try_resume():
            return
        if self.config.init_weights is not None:
            self.load_initial_weights(self.config.init_weights)

    # -- training ------------------------------------------------------------------
    def learning_rate_at(self, step: int) -> float:
        """Polynomial decay over the run's progress.

        Progress is the larger of the step fraction and the time fraction, so a
        run capped by ``max_hours`` still anneals to a small learning rate.
        """
        progress = max(
            step / self.config.max_steps, self.elapsed_s / (self.config.max_hours * 3600)
        )
        return self.config.learning_rate * max(0.0, 1 - progress) ** 0.9

    def _tensors(self, case: TrainingCase) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and labels of ``case`` on the training device.

        Kept after first use (about 10 MB a case at 128^3), so a step does not
        normalise or copy whole volumes again: on a GPU the volumes stay there
        and patches are sampled on the GPU.
        """
        cached = self._volume_cache.get(case.case_id)
        if cached is None:
            img = normalise_hu(case.image_hu, self.config.min_hu, self.config.max_hu)
            cached = (
                torch.from_numpy(img).to(self.device),
                torch.from_numpy(case.labels).to(self.device),
            )
            self._volume_cache[case.case_id] = cached
        return cached

    def train_step(self, batch: list[TrainingCase]) -> dict[str, float]:
        self.model.train()
        imgs, labs, knowns = [], [], []
        for case in batch:
            img, lab = self._tensors(case)
            pi, pl = sample_patch(
                img, lab, self.config.patch_size, self.config.spacing_mm, self.rng, self.aug
            )
            known = torch.from_numpy(case.known.copy()).to(self.device)
            mirror_p = self.config.mirror_probability  # no draw when off: runs repeat as before
            if mirror_p > 0 and self.rng.random() < mirror_p:
                pi, pl, known = mirror_left_right(pi, pl, known, self._mirror_order)
            imgs.append(pi)
            labs.append(pl)
            knowns.append(known)
        x = torch.stack(imgs).to(self.device)
        y = torch.stack(labs).to(self.device)
        known = torch.stack(knowns).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.step)
        with autocast_for(self.device):
            logits = self.model(x)
        loss, parts = dice_ce_loss(
            logits.float(), y, known, foreground_ce_weight=self.config.foreground_ce_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.optimizer.step()
        return {"loss": float(loss.detach()), **parts}

    @torch.no_grad()
    def validate(self, cases: list[TrainingCase]) -> dict[str, float]:
        """Whole-volume loss and hard Dice per ROI on validation cases."""
        self.model.eval()
        n_cls = len(self.config.roi_names) + 1
        losses = []
        inter = np.zeros(n_cls)
        total = np.zeros(n_cls)
        for case in cases:
            img, lab = self._tensors(case)
            x, crop = pad_to_multiple(img[None, None], self.model.config.size_divisor)
            with autocast_for(self.device):
                logits = self.model(x.to(self.device))
            logits = logits.float()[crop].cpu()
            known = torch.from_numpy(case.known)[None]
            loss, _ = dice_ce_loss(logits, lab[None].long().cpu(), known)
            losses.append(float(loss))
            pred = logits[0].argmax(0).numpy()
            for c in range(1, n_cls):
                if case.known[c]:
                    inter[c] += 2 * np.logical_and(pred == c, case.labels == c).sum()
                    total[c] += (pred == c).sum() + (case.labels == c).sum()
        result = {"val_loss": float(np.mean(losses))}
        for c, name in enumerate(self.config.roi_names, start=1):
            result[f"dice_{name}"] = float(inter[c] / total[c]) if total[c] else float("nan")
        result["mean_dice"] = mean_roi_dice(result)
        return result

    def fit(self, train: list[TrainingCase], val: list[TrainingCase]) -> None:
        """Train until max_steps, max_hours or early stopping; checkpoint as it goes."""
        cfg = self.config
        start = time.monotonic() - self.elapsed_s
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step")
        window: list[float] = []
        while self.step < cfg.max_steps:
            idx = self.rng.choice(len(train), size=cfg.batch_size, replace=False)
            parts = self.train_step([train[i] for i in idx])
            self.step += 1
            window.append(parts["loss"])
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(window[-20:]):.3f}", dice=f"{parts['dice']:.2f}")
            self.elapsed_s = time.monotonic() - start
            stop = False
            if self.step % cfg.validate_every == 0 or self.step == cfg.max_steps:
                metrics = self.validate(val)
                entry = {
                    "step": self.step,
                    "train_loss": float(np.mean(window)),
                    **metrics,
                    "elapsed_s": self.elapsed_s,
                }
                window = []
                self.history.append(entry)
                log.info("step %d %s", self.step, json.dumps(entry))
                if self.improved(metrics):
                    self.evals_without_improvement = 0
                    self.save_best()
                else:
                    self.evals_without_improvement += 1
                    if self.evals_without_improvement >= cfg.early_stop_patience:
                        log.info(
                            "early stop: validation loss did not improve for %d evaluations",
                            self.evals_without_improvement,
                        )
                        stop = True
                self.plot_loss_curve()
            if self.step % cfg.checkpoint_every == 0 or stop:
                self.save_checkpoint()
            if stop or self.elapsed_s > cfg.max_hours * 3600:
                break
        self.save_checkpoint()
        bar.close()

    def improved(self, metrics: dict[str, float]) -> bool:
        """Record ``metrics`` against the best so far; True when they beat it.

        The criterion is ``select_best_by``: lowest validation loss, or highest
        mean Dice over the ROIs with a reference in the validation cases.
        """
        mean_dice = metrics.get("mean_dice", mean_roi_dice(metrics))
        if self.config.select_best_by == "mean_dice":
            better = mean_dice > self.best_mean_dice
        else:
            better = metrics["val_loss"] < self.best_val_loss
        if better:
            self.best_val_loss = metrics["val_loss"]
            self.best_mean_dice = mean_dice
        return better

    def save_best(self) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = self.run_dir / "best.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(self.run_dir / "best.safetensors")
        (self.run_dir / "best.json").write_text(json.dumps(self.history[-1], indent=1))

    def plot_loss_curve(self) -> Path:
        """Write ``loss_curve.png`` (train and validation loss, mean Dice)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in self.history]
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax[0].plot(steps, [h["train_loss"] for h in self.history], label="train")
        ax[0].plot(steps, [h["val_loss"] for h in self.history], label="validation")
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("Dice + CE loss")
        ax[0].legend()
        for name in self.config.roi_names:
            ax[1].plot(
                steps, [h.get(f"dice_{name}", float("nan")) for h in self.history], label=name
            )
        ax[1].set_xlabel("step")
        ax[1].set_ylabel("validation Dice")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        out = self.run_dir / "loss_curve.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        return out


def mean_roi_dice(metrics: dict[str, float]) -> float:
    """Mean of the ``dice_<ROI>`` entries that are numbers (NaN: no reference)."""
    values = [v for k, v in metrics.items() if k.startswith("dice_") and not math.isnan(v)]
    # (keys are "dice_<ROI>"; "mean_dice" does not start with "dice_")
    return float(np.mean(values)) if values else float("nan")


def mirror_left_right(
    image: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, class_order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror a patch along x (the patient's left-right axis) and swap L/R labels.

    Parameters
    ----------
    image
        ``[1, z, y, x]`` patch.
    labels
        ``[z, y, x]`` int64 class labels.
    known
        ``[C]`` bool, which classes are labelled in the case.
    class_order
        ``[C]`` class -> class after mirroring (see
        :meth:`TrainingConfig.mirror_class_order`).
    """
    mirrored_labels = class_order[labels.flip(-1)]
    mirrored_known = torch.empty_like(known)
    mirrored_known[class_order] = known
    return image.flip(-1), mirrored_labels, mirrored_known


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="use only N training cases")
    parser.add_argument(
        "--init-weights",
        type=Path,
        default=None,
        help="warm start from these U-Net weights (safetensors); overrides init_weights",
    )
    parser.add_argument(
        "--cases",
        type=Path,
        default=None,
        help="preprocessed case bundle (training.device_bundle) instead of the config's folders",
    )
    parser.add_argument("--threads", type=int, default=None, help="override the config's threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of bugs too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return cli_error_exit("training.trainer", lambda: _train(args), verbose=args.verbose)


def _train(args: argparse.Namespace) -> int:
    """``main`` after parsing: load the cases and train (resuming a run in ``--run-dir``)."""
    config = load_training_config(args.config)
    if args.init_weights is not None:
        config.init_weights = args.init_weights.resolve()
    if args.threads is not None:
        config.threads = args.threads
    trainer = Trainer(config, args.run_dir, args.device)
    if args.cases is not None:  # a GPU machine without SimpleITK/pydicom: no dataset readers
        from training.device_bundle import read_cases

        train, val = read_cases(args.cases)
        train = train[: args.limit] if args.limit else train
        val = val[: config.validation_cases]
    else:  # NIfTI (cache files train.npz / validation.npz / all.npz) or DICOM datasets
        from training.datasets import load_training_data

        train, val = load_training_data(config, cache_dir=args.run_dir / "cache", limit=args.limit)
    trainer.start(resume=True)
    trainer.fit(train, val)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
