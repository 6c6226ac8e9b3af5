"""Files svdzoo writes beside its outputs for other tools (transformers remote code)."""
