"""MotorIdentifier, a 3D feature pyramid network, and its building blocks."""
