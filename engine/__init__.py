"""Meta-learning playground engine: data, models, learners and training (no UI code)."""
