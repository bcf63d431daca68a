"""From a config to a trained, evaluated model: the logic behind every script (being rewritten)."""
