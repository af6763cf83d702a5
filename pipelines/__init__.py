"""Per-item flows built on `models`, a folder per flow; nothing here imports Ray (the jobs in `ray_jobs` and the
HTTP service in `serve` wire these into Ray).

- `articulated_noise`: motion -> warp operator, the one flow every other flow uses;
- `generation`: reference image + motion or pose video -> video (the animation pipeline, long videos, render items);
- `preprocess`: videos with sidecars -> training rows (clips, pose sources, SMPL fit, stages);
- `training`: training rows -> fine-tuned weights (step, engine, schedule, validation);
- `evaluation`: generated vs ground-truth videos -> metrics and the papers' table;
- `io`: files in and out (motion, video, manifests, configs, Arrow columns, the training-row contract);
- `demo`: the procedural demo motions, reference images and manifest.
"""
