"""Exports of a finished model folder to formats other runtimes load (`vikhr export gguf`: llama.cpp, Ollama, LM
Studio). Each exporter checks its input completely before it creates any output, and writes through a temporary file
renamed into place, so a failed export never leaves a file that looks finished."""
