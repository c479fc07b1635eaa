"""The composition root: the `pixelmill` command, the stack supervisor and the embedded Redis.
It alone may import every other room."""
