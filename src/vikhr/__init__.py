"""vikhr: adapt an English-oriented LLM to another language (Russian first), after the Vikhr paper."""

__version__ = "0.1.0"
