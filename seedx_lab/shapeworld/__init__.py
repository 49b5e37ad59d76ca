"""The synthetic shape world: scenes and their texts (``world``), a pixel-only judge, held-out evaluation."""
