"""Sampling: settings and text streams, the numpy sampler (CPU, no torch), the torch sampler
(any device), the Triton chooser (CUDA) and the dispatch that picks one of them."""
