"""The HTTP client of the JSON API and `pixelmill submit` (needs only requests and tqdm)."""
