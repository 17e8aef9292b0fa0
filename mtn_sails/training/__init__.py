"""Training: the plan, the start model, tokenising and batching, the HF Trainer, the retention levers, the
measurement of earlier sessions, and the train recipe that composes them (session.py)."""
