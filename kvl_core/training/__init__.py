"""Training: Muon, data pipeline, stage recipes and the trainer (paper §2.2–2.4)."""
