"""The ShapeWorld lab: a world of moving shapes, its analytic metrics, the base model trained on it, the shared
task of the demo and the benches, and the tiny random models for tests. Uses the core; the core never imports it."""
