"""What every stage shares: the `MadcacheError` hierarchy (errors), the one registry class
(registry), typed configs and the KEY=VALUE parser (config), atomic writes, digests and git
(io). Imports no other madcache package."""
