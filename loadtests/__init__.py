"""Load tests for sse_bridge: the locust suite and the stack it runs against."""
