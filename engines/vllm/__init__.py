"""The vLLM engine: vLLM's own OpenAI server, launched and watched by the gateway."""
