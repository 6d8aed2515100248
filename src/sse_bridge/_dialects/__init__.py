"""How one NDJSON line becomes events: the template every dialect fills in, and the built-ins.

Pure: a dialect sees one decoded value at a time and returns encoded events. It imports only the
core; nothing here knows of ASGI, the middleware or the proxy.
"""
