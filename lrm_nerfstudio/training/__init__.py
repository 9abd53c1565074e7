"""Training at scale: deferred back-propagation, progressive resolution, per-step seeding, distributed helpers."""
