"""Sampling: settings and text streams, the numpy sampler (CPU, no torch), the torch sampler
(any device) and the Triton chooser (CUDA); `charrnn.inference.Model` picks the sampler."""
