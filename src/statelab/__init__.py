"""statelab: where state lives, made measurable."""
