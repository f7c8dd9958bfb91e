"""The papers' video metrics, computed from local weights only (no download ever):

* `tracks`: point tracks (OpenCV corners + pyramidal Lucas-Kanade with a forward-backward check, or any tracker
  with the same call) and DMT's motion fidelity on them;
* `flow`: dense optical flow, camera motion from background pixels, VBench's dynamic degree;
* `embeddings`: CLIP and DINO (v2) from local folders through transformers' own classes: CLIP-T, temporal
  consistency, R-CLIP / R-DINO, appearance leakage from the reference.

`app.evaluate` runs them over videos and writes the report (`motiontune evaluate`); the ShapeWorld lab and the
benches use the same functions where they apply.
"""
