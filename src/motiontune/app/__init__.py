"""The application layer: the Python API, the command line, the demo and the benches. Nothing below imports it."""
