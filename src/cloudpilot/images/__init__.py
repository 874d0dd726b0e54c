"""Image lists: Ed25519 signing and verification, fetching lists and images (docs/images.md)."""
