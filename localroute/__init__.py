"""localroute: a local-first, OpenAI-compatible router for self-hosted open-weight models."""

__version__ = "0.1.0"
