"""The demo's inputs, made here: procedural motions (`motions`), the posed template body as a reference image
(`reference`), and the render manifest with ground truth that `humanim demo` runs (`manifest`).
"""
