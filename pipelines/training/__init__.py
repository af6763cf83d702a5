"""Training: training rows -> a fine-tuned backbone (LoRA or full), PadaLN and motion decoder.

Open `step` first: one step of the objective (articulated noise, diffusion loss, JAML, GMCL). `engine` wraps it
in DeepSpeed with checkpoints and export, `schedule` decides which rows each rank reads at each step, `config` is
the job's configuration, `metrics` its sinks and `validation` the periodic generation from held-out rows. Rows
come through `pipelines.io.training_rows` and `pipelines.io.row_reader`.
"""
