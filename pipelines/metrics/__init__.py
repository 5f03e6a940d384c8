"""Video-prediction metrics: PSNR, SSIM, LPIPS, FID, FVD and the Frechet distance (docs/design.md §9).

Metrics know nothing of world models: they take uint8 frames and return numbers.
"""
