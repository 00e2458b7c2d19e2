"""The Quix Streams peer of the map stage benchmark: see run.py and app.py."""
