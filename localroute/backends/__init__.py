"""Backends: the one protocol every rung implements, and its OpenAI-over-HTTP implementation."""
