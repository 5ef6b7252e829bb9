"""Writing TOML values from Python in tests: the writer `localroute init` uses for models.toml."""

from localroute.host.init_toml import toml_key, toml_value

__all__ = ["toml_key", "toml_value"]
