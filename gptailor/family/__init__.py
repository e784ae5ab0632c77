"""A family of checkpoints: its spec, where members' files come from, compatibility checks, devices and the loaded ``Family``."""
