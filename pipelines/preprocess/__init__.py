"""Preprocessing: videos (with optional motion, keypoint, caption and mask sidecars) -> training rows.

Open `stages` first: the video job's stages (probe, pose, decode, render, encode, write) that `ray_jobs.preprocess`
runs on Ray Data, configured by `config`. `clips` samples and crops clips, `pose_sources` finds each clip's motion
(a sidecar, or `keypoint_estimators` plus the SMPL fit of `smpl_fit`). `motion_folder` is the lighter job over a
folder of motion files (warp operators and previews only). Rows are written through `pipelines.io.training_rows`.
"""
