"""Configuration of rum-llmobs-proxy: the one place that reads the environment."""
