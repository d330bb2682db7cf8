"""The gateway: one FastAPI process that routes OpenAI requests to per-model engine workers."""
