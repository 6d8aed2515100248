"""What the tests, the demo, the benchmarks and the load tests run: the fake Ollama and loopback.

Production code never imports this folder; :mod:`sse_bridge.testing` re-exports its public names.
"""
