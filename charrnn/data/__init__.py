"""From files to training batches: corpus reading, tokenizers, the token cache and splits, the stream batcher."""
