"""Type A ("chameleon-tiny"): discrete image codes as ordinary LLM tokens, Chameleon's design, built on the same shape world as seedx-tiny for a side-by-side comparison with SEED-X (Type B3)."""
