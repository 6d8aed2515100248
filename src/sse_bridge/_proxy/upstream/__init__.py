"""The httptools upstream transport: a pool of connections, each a protocol with its parser."""
