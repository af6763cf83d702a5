"""Generation: a reference image and a driving motion (or skeleton pose video) -> a video of that person moving.

Open `animation` first: `AnimationPipeline` loads a backbone adapter, builds the articulated noise, denoises one
window or several overlapping ones (`long_video`) and decodes. `frames` converts images and videos at the model
boundary. The offline render job runs per item in three stages: `render_manifest` (config and manifest),
`render_stages` (prepare, generate, encode) and `render_store` (videos and metadata on a local or pyarrow filesystem).
"""
