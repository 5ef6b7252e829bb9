"""The rungs of the ladder: llama.cpp workers, managed vLLM, the remote provider, and the registry that
builds them from config by import string."""
