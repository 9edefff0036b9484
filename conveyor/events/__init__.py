"""What is announced: a run's event log (published on Redis after commit) and user notifications."""
