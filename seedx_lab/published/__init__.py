"""The published SEED-X checkpoint layout: readers, a writer, and the key maps between the two."""
