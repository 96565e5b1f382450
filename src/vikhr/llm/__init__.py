"""The LLM client every stage that asks a model uses (corpus quality judge, translation): any OpenAI-compatible
endpoint, with retries, bounded concurrency, a disk cache of responses and accounting."""

from vikhr.llm.cache import ResponseCache, cache_key, canonical_json
from vikhr.llm.client import (
    ChatResult,
    LLMAuthError,
    LLMClient,
    LLMError,
    LLMStats,
    LLMUnreachableError,
    backoff_delay,
    parse_retry_after,
    resolve_api_key,
    resolve_base_url,
    resolve_cache_dir,
)

__all__ = [
    "ChatResult",
    "LLMAuthError",
    "LLMClient",
    "LLMError",
    "LLMStats",
    "LLMUnreachableError",
    "ResponseCache",
    "backoff_delay",
    "cache_key",
    "canonical_json",
    "parse_retry_after",
    "resolve_api_key",
    "resolve_base_url",
    "resolve_cache_dir",
]
