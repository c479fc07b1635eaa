"""Image engines run by the pixelmill workers."""
