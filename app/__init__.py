"""Gradio apps on top of minidpo exports. `python -m app.compare --help`."""
