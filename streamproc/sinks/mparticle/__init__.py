"""mParticle's Events API: the delivery client and its command."""
