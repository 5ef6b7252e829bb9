"""The shapes every layer shares: the OpenAI wire models and the Backend protocol every rung implements."""
