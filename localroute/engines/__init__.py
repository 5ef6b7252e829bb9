"""Engines: model runtimes as supervised processes (llama.cpp workers, and later vLLM servers)."""
