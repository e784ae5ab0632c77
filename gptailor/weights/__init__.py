"""Reading tensors: safetensors checkpoints memory-mapped per tensor (``checkpoint``) and the byte-bounded tensor cache (``cache``)."""
