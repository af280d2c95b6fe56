"""`chaos report`: the experiment log (Markdown, HTML, JSON) with SLI timelines.

Import-light on purpose: ``chaos`` loads ``plugin`` on every invocation, so this package
imports nothing; the rendering modules are imported inside the command.
"""
