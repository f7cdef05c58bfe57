"""Tooling for tests and experiments, never imported by a run.

    random_models   random-weight models of the real families (Llama-3, Qwen3, Gemma-3, ...),
                    built offline with their published chat templates (chat_templates/)
    charlm          the character-level tokenizer and Llama config of the embedded model
                    (experiments/make_tiny_model.py builds models/tiny-arith with it)

tests/ and experiments/ import these; nothing under mfsi/ outside this package does.
"""
