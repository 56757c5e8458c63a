"""Evaluation metrics for PiTe (point tracking, grounding, captioning, QA)."""
