"""Developer tools around the app: browser driving, timing and the README screenshot (``python -m tools.<name>``)."""
