"""PiTe: pixel-temporal alignment for video LLMs — shared core (schema, timeline, configs, models, eval)."""

__version__ = "0.1.0"
