"""Click commands, one module per command; `madcache.cli` imports them lazily."""
