"""Steel Defect Studio engine: models, generation, training and evaluation (no UI, no SQL)."""
