"""A local web page for every generation task: `python -m axturbo.demo --checkpoint CKPT`.

`app.py` checks the page's fields and runs a request (no Gradio needed: the fast tests use it
directly); `page.py` builds the Gradio page around it; `__main__.py` is the command line.
Gradio is an optional extra (`pip install ".[demo]"`); the base install never imports it.
"""
