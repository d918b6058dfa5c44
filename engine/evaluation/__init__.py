"""Evaluation: fidelity, realism, strength tuning, the masked report, few-shot recognition, the feature network."""
