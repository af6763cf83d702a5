"""Evaluation: generated videos vs ground truth -> per-video metrics and the papers' table.

Open `job` first: pairing by file stem, the per-pair evaluator and the report. `metrics` defines the pixel metrics
(L1, PSNR, SSIM) and the Frechet distance; `feature_networks` loads LPIPS, Inception and I3D from local weights.
"""
