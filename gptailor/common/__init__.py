"""Small rules every part of the engine shares: number ranges, path-safe names, progress and cancellation, error wording."""
