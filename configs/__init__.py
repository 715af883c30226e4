"""ml-collections experiment configs: `get_config(arg)` per file."""
