"""The latent cache: content keys and the Redis-backed latent store."""
