"""The llama.cpp rung: a supervisor in the gateway and a worker process per model."""
