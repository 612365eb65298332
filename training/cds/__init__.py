"""Multimodal differential-diagnosis model: synthetic cohort, note embedding, training, explanations."""
