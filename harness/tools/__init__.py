"""Tools on top of a run: shrink, bisect, bench, CUDA-graph capture."""
