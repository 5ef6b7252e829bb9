"""This machine: memory, disks and GPUs, the memory budget that places engines, GGUF files, model pulls."""
