"""The pure core: line framing, the SSE encoder and parser, header rules, checks, the contract.

Nothing here opens a socket or starts a server, and nothing here imports another folder of the
package: every layer above may use it.
"""
