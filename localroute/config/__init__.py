"""models.toml: its schema (models, routing, privacy, server sections) and the one loader."""
