"""mfsi: Multiagent Finetuning (Subramaniam et al., ICLR 2025), reimplemented."""
