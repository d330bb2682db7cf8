"""Engine workers (one process per loaded model) and the launchers the gateway uses."""
