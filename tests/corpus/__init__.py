"""A generated corpus of awkward inputs (nothing downloaded): images for the uploaders, task files
for "Open task", malformed checkpoints for the model loader.

Every case is built in memory from a fixed seed, so the corpus is the same on every machine. Each
case says what must happen: ``added`` (the image becomes an example, possibly with a note) or the
words its refusal message must contain.
"""
