"""Instruction data and tuning: dataset formats, translation through the LLM client, reward model, SFT masks."""
