"""Talk to a model: the batching engine, the OpenAI-compatible server (`vikhr serve`), the chat REPL."""
