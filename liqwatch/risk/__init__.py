"""What the core's numbers mean for a risk desk: alert episodes, stress cascades, position limits."""
