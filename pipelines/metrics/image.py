"""Per-frame PSNR and SSIM (11x11 Gaussian window, sigma 1.5) on uint8 frames, via torchmetrics."""

from __future__ import annotations

import numpy as np
import torch


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (N, 3, H, W) float in [0, 255]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)


def psnr_frames(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """PSNR in dB per frame for (..., H, W, 3) uint8 arrays -> shape (...); identical frames give inf."""
    p, r = _to_tensor(pred), _to_tensor(ref)
    mse = ((p - r) ** 2).mean(dim=(1, 2, 3)).double()
    psnr = 10 * torch.log10(255.0**2 / mse)
    return psnr.numpy().reshape(pred.shape[:-3])


PSNR_CAP_DB = 100.0  # the PSNR that identical frames (MSE 0) count as, where a finite number is needed


def psnr_from_mse(mse, cap: float = PSNR_CAP_DB) -> np.ndarray:
    """PSNR in dB of uint8 frames from their MSE; identical frames (MSE 0) give ``cap``."""
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / np.asarray(mse, np.float64)), cap)


def ssim_frames(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """SSIM per frame (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 255) -> shape (...)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    p, r = _to_tensor(pred), _to_tensor(ref)
    out = ssim(p, r, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0, reduction="none")
    return out.double().numpy().reshape(pred.shape[:-3])
