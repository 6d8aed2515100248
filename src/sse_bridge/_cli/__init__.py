"""The command line: ``serve`` on uvicorn, ``demo`` and its page, ``probe`` and ``fake-ollama``.

The only place click is imported; each command parses its options and calls a keyword-only
function of the layers below.
"""
