"""The training objective: the MD / MAD / AF loss terms (losses), top-m word selection
(selection), the method registry (methods) and one stage's loss (objective). May import core,
data, cache and students."""
