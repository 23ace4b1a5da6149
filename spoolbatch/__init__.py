"""spoolbatch: OpenAI-format batch jobs through vLLM from a spool directory, exactly once."""

__version__ = "0.1.0"
