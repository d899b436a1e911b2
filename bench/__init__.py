"""Benchmarks of xenemu: `python -m bench [--smoke]` (see __main__)."""
