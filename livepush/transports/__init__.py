"""Transports: WebSocket and SSE subscribers, writing the hub's frames to their sockets."""
