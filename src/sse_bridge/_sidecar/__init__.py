"""The sidecar: the front layer (health, API key, stream limit, CORS, the log line), the middleware
and the proxy composed, with their options and graceful shutdown."""
