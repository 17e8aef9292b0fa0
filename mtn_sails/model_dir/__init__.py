"""The model directory: what it holds and whether it loads, the atomic swap and lock, the stored slices, the
session history with its model card and plots. Reads and writes files; trains nothing."""
